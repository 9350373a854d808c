"""Probe sets of a text, made once and cached: training probes and a disjoint held-out set.

    >>> train, heldout, seconds = build_probe_sets(lm, text, ProbeConfig(), heldout_per_chunk=4,
    ...                                            cache_path="notes.locas.probes.json")
    >>> cache = ProbeCache("run/notes.locas.probes.json", fingerprint(lm, text, cfg))
    >>> examples = cache.get("train") or cache.put("train", make_examples())
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ..core.files import atomic_write, model_fingerprint
from ..errors import LocasError
from ..text.sentences import split_chunks
from .config import ProbeConfig
from .families import make_probes, probe_key
from .teacher import Example, label_examples, teacher_examples


class ProbeCache:
    """Probes and teacher answers in one JSON file next to the run, keyed by a fingerprint."""

    def __init__(self, path, fingerprint: dict):
        self.path = Path(path)
        fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as stored
        self.fingerprint = fingerprint
        self.data = {"fingerprint": fingerprint, "sets": {}}
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = None
            if old and old.get("fingerprint") == fingerprint:
                self.data = old

    def get(self, name: str) -> list[Example] | None:
        rows = self.data["sets"].get(name)
        if rows is None:
            return None
        return [Example(r["family"], r["context"], r["prompt"], r["answer"], torch.tensor(r["topk_logits"]),
                        torch.tensor(r["topk_index"], dtype=torch.long), r["answer_text"], r["reference"],
                        r["reference_ids"], r["teacher_nll"], r["probe"], r.get("student_prefix", []),
                        r.get("aliases", [])) for r in rows]

    def put(self, name: str, examples: list[Example]) -> list[Example]:
        rows = []
        for e in examples:
            r = {k: getattr(e, k) for k in ("family", "context", "prompt", "answer", "answer_text", "reference",
                                            "reference_ids", "teacher_nll", "probe", "student_prefix", "aliases")}
            r["topk_logits"] = [[round(float(x), 4) for x in row] for row in e.topk_logits.tolist()]
            r["topk_index"] = e.topk_index.tolist()
            rows.append(r)
        self.data["sets"][name] = rows
        text = json.dumps(self.data, indent=2)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        return examples


def fingerprint(lm, text: str, cfg: ProbeConfig) -> dict:
    """What a cached probe set must match to be reused: model, weights, probe settings and the text."""
    return {"model": str(lm.name), "weights": model_fingerprint(lm), "probe_cfg": cfg.to_dict(),
            "text_sha": hashlib.sha256(text.encode()).hexdigest()[:16]}


def build_probe_sets(lm, text: str, cfg: ProbeConfig, heldout_per_chunk: int = 0, cache_path=None,
                     progress: bool = True, teacher: bool = True, heldout_families: tuple | None = None
                     ) -> tuple[list[Example], list[Example], dict]:
    """Training examples (seed ``cfg.seed``) and held-out ones (seed + 1, disjoint, of ``heldout_families``,
    default the training families, always answered by the teacher: the with-text ceiling); cached when a
    path is given. ``teacher=False`` makes the training examples hard-label ones (``label_examples``).

    Returns (train, heldout, timings in seconds).
    """
    chunks = split_chunks(lm.tokenizer, text, cfg.chunk_tokens)
    cache = ProbeCache(cache_path, fingerprint(lm, text, cfg)) if cache_path else None
    times = {}
    sets = {}
    train_keys: set[str] = set()
    held = tuple(heldout_families or cfg.families)
    for name, seed, cap, fams, answered in (("train", cfg.seed, cfg.per_chunk, cfg.families, teacher),
                                            ("heldout", cfg.seed + 1, heldout_per_chunk, held, True)):
        key = f"{name}-{cap}-{','.join(fams)}-{'teacher' if answered else 'label'}"
        if name == "heldout" and cap <= 0:
            sets[name] = []
            continue
        cached = cache.get(key) if cache else None
        if cached is not None:
            sets[name] = cached
            train_keys |= {probe_key(e.probe) for e in cached}
            times[name] = 0.0
            continue
        t0 = time.perf_counter()
        sub = ProbeConfig(**{**cfg.to_dict(), "per_chunk": cap, "families": fams})
        probes = make_probes(lm, chunks, sub, seed=seed, exclude=train_keys, progress=progress)
        if answered:
            examples = teacher_examples(lm, chunks, probes, sub, progress=progress)
        else:
            examples = label_examples(lm, chunks, probes, sub)
        train_keys |= {p.key for p in probes}
        times[name] = time.perf_counter() - t0
        sets[name] = cache.put(key, examples) if cache else examples
    if not sets["train"]:
        raise LocasError("no probes could be made from this text (no sentence with a name or a number?); add "
                         "families (--families fact,template) or memorise its wording with --objective ntp")
    return sets["train"], sets["heldout"], times
