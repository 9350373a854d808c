"""Retention after memorising: base vs Locas vs TempLoRA on MMLU and on a held-out book.

A *variant* is a named way of running the model (base, a memory, a LoRA adapter, a fused
checkpoint); ``enter()`` is a context manager that yields something called like a transformers
causal LM. Every variant is scored on the same MMLU questions and the same held-out windows;
KL is ``KL(p_base || p_variant)`` of the next-token distributions, averaged over held-out tokens.

    >>> variants = [base_variant(lm), memory_variant(lm, memory), lora_variant(lm, learner.peft_model)]
    >>> payload = retention_report(variants, lm.tokenizer, heldout_tokens, questions, shots=5, window=1024)
    >>> write_retention(payload, "runs/retention")          # results.json, results.csv, retention.png
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.files import atomic_write
from ..core.model import ModelState, prepend_bos
from ..distributed import DistContext, run_sharded
from ..errors import LocasError
from ..learn.learners import make_learner
from ..learn.stream import stream, window_spans
from ..settings import setting, validate
from .mmlu import aggregate, compare, score_questions
from .report import format_table, plt_agg, write_csv, write_json


@dataclass
class HeldoutConfig:
    """The held-out text whose perplexity and KL to the base model show forgetting."""

    heldout: str = setting("10321", "held-out PG-19 id or text file", path="book")
    heldout_tokens: int = setting(8192, "first N tokens of the held-out text (0 = all)", minimum=0)

    def __post_init__(self):
        validate(self)


@dataclass
class Variant:
    name: str
    enter: Callable  # () -> context manager yielding a callable causal LM
    bos_ids: tuple[int, ...] = ()  # what every window it reads starts with (``lm.bos_ids``: Gemma's <bos>)


def _adapters_off(peft_model):
    return peft_model.disable_adapter() if peft_model is not None else nullcontext()


def base_variant(lm, peft_model=None, name: str = "base") -> Variant:
    """The exact base model: memory off (and LoRA adapters off when ``peft_model`` is injected)."""

    @contextmanager
    def enter():
        with _adapters_off(peft_model), lm.disabled():
            yield lm.model

    return Variant(name, enter, tuple(lm.bos_ids))


def memory_variant(lm, memory: torch.Tensor, layers=None, peft_model=None, name: str = "locas") -> Variant:
    """``lm`` with a Locas memory (L|len(layers), 1, r, d, C) installed, on the memory site ``lm`` has now (a memory
    file loaded just before put it there; variants of different sites can be compared side by side)."""
    state = ModelState(memory=memory, layers=layers, site=lm.site)

    @contextmanager
    def enter():
        with _adapters_off(peft_model), state.apply(lm) as model:
            yield model

    return Variant(name, enter, tuple(lm.bos_ids))


def lora_variant(lm, peft_model, name: str = "lora") -> Variant:
    """The TempLoRA adapter (a peft model wrapping ``lm.model``), Locas memory off."""

    @contextmanager
    def enter():
        with lm.disabled():
            yield peft_model

    return Variant(name, enter, tuple(lm.bos_ids))


def model_variant(model, name: str, bos_ids=()) -> Variant:
    """Any standalone causal LM (e.g. a fused dense checkpoint) with the same tokenizer (``bos_ids``: its
    ``lm.bos_ids``)."""
    return Variant(name, lambda: nullcontext(model), tuple(bos_ids))


@torch.no_grad()
def window_stats(variants: list[Variant], tokens: torch.Tensor, span: tuple[int, int]) -> dict[str, dict]:
    """Per variant: summed NLL and KL(first variant || it) over one window ``tokens[s:e]`` (1-D tokens)."""
    s, e = span
    ref, out = None, {}
    for v in variants:
        with v.enter() as model:
            dev = next(model.parameters()).device
            ids = tokens[s:e][None].to(dev)  # (1, T)
            read, k = prepend_bos(ids, v.bos_ids)
            logits = model(input_ids=read, use_cache=False).logits[0, k:-1]  # (T-1, V): the window's own positions
            logp = torch.log_softmax(logits.float(), -1)
        target = ids[0, 1:]
        kl = 0.0 if ref is None else float((ref.exp() * (ref - logp)).sum())
        out[v.name] = {"nll": float(-logp.gather(1, target[:, None]).sum()), "kl": kl, "tokens": int(target.numel())}
        ref = logp if ref is None else ref
    return out


def pool_windows(per_window: list[dict[str, dict]]) -> dict:
    """Per variant: perplexity and mean KL over all windows (summed in window order)."""
    stats: dict[str, dict] = {}
    for w in per_window:
        for name, st in w.items():
            acc = stats.setdefault(name, {"nll": 0.0, "kl": 0.0, "tokens": 0})
            acc["nll"] += st["nll"]
            acc["kl"] += st["kl"]
            acc["tokens"] += st["tokens"]
    return {k: {"ppl": math.exp(st["nll"] / st["tokens"]), "kl": st["kl"] / st["tokens"], "tokens": st["tokens"]}
            for k, st in stats.items()}


def heldout_metrics(variants: list[Variant], tokens: torch.Tensor, window: int, progress: bool = True) -> dict:
    """Per variant: perplexity of ``tokens`` (1-D) through windows, and mean KL(first variant || it).

    The first variant is the reference (normally the base model); its KL is exactly 0.
    """
    if not variants:
        raise LocasError("no model variants to compare")
    tokens = tokens.flatten().cpu()
    spans = window_spans(len(tokens), window)
    return pool_windows([window_stats(variants, tokens, sp) for sp in tqdm(
        spans, desc="held-out", disable=not progress, unit="win", dynamic_ncols=True)])


def mmlu_runs(variants: list[Variant], tokenizer, questions, shots: int, dev, batch_size: int = 8,
              progress: bool = True) -> dict[str, list[dict]]:
    """Per-question records of every variant on the same questions."""
    out = {}
    for v in variants:
        with v.enter() as model:
            out[v.name] = score_questions(model, tokenizer, questions, shots, dev, batch_size, progress,
                                          desc=f"mmlu {v.name}")
    return out


def retention_units(questions, heldout_tokens: torch.Tensor | None, window: int) -> list[tuple]:
    """The independent pieces of a report: one MMLU subject, or one held-out window."""
    units: list[tuple] = [("mmlu", subject) for subject in dict.fromkeys(q.subject for q in questions or [])]
    if heldout_tokens is not None:
        units += [("heldout", k, s, e) for k, (s, e) in enumerate(window_spans(heldout_tokens.numel(), window))]
    return units


def unit_name(unit: tuple) -> str:
    return f"mmlu {unit[1]}" if unit[0] == "mmlu" else f"held-out window {unit[1]} (tokens {unit[2]}-{unit[3]})"


def unit_part(unit: tuple) -> str:
    return f"mmlu__{unit[1]}" if unit[0] == "mmlu" else f"heldout__{unit[1]:05d}"


def retention_report(variants: list[Variant], tokenizer, heldout_tokens: torch.Tensor | None, questions, *,
                     shots: int = 5, dev=None, window: int = 1024, cats: dict | None = None, batch_size: int = 8,
                     progress: bool = True, meta: dict | None = None, ctx: DistContext | None = None,
                     parts_dir=None, resume: bool = False, fingerprint=None) -> dict | None:
    """MMLU (with paired change vs the first variant) and held-out ppl/KL for every variant.

    The work is split into MMLU subjects and held-out windows (``retention_units``); under
    torchrun they are sharded across ranks and rank 0 returns the payload (others None). With
    ``parts_dir`` each finished piece is kept there and ``resume`` reuses it (see ``run_sharded``).
    """
    if not variants:
        raise LocasError("no model variants to compare")
    ref = variants[0].name
    tokens = heldout_tokens.flatten().cpu() if heldout_tokens is not None else None

    def work(unit: tuple) -> dict:
        if unit[0] == "heldout":
            return window_stats(variants, tokens, (unit[2], unit[3]))
        subject = [q for q in questions if q.subject == unit[1]]
        return mmlu_runs(variants, tokenizer, subject, shots, dev, batch_size, progress=False)

    units = retention_units(questions, tokens, window)
    done = run_sharded(ctx, units, work, name=unit_name, part=unit_part, parts_dir=parts_dir, resume=resume,
                       fingerprint=fingerprint, progress=progress, desc="retention")
    if done is None:
        return None
    records: dict[str, list[dict]] = {}
    for unit, res in zip(units, done):
        if unit[0] == "mmlu":
            for v in variants:
                records.setdefault(v.name, []).extend(res[v.name])
    windows = [res for unit, res in zip(units, done) if unit[0] == "heldout"]
    held = pool_windows(windows) if windows else {}
    rows = {}
    for v in variants:
        row: dict = {}
        if records:
            agg = aggregate(records[v.name], cats)
            base = aggregate(records[ref], cats)
            row.update(mmlu_micro=agg["micro"], mmlu_macro=agg["macro"],
                       mmlu_delta_points=100.0 * (agg["micro"] - base["micro"]),
                       mmlu_categories={k: c["acc"] for k, c in agg["categories"].items()},
                       **compare(records[v.name], records[ref]))
        if held:
            row.update(heldout_ppl=held[v.name]["ppl"], heldout_ppl_ratio=held[v.name]["ppl"] / held[ref]["ppl"],
                       heldout_kl=held[v.name]["kl"], heldout_tokens=held[v.name]["tokens"])
        rows[v.name] = row
    return {"reference": ref, "shots": shots, "mmlu_questions": len(questions or []), "window": window,
            **(meta or {}), "variants": rows, "mmlu_records": records}


HEADER = ["variant", "MMLU %", "dMMLU pts", "agree %", "letter KL", "held-out ppl", "ppl/base", "KL(base||.)"]


def table_rows(payload: dict) -> list[list]:
    rows = []
    for name, r in payload["variants"].items():
        rows.append([name, 100 * r["mmlu_micro"] if "mmlu_micro" in r else "", r.get("mmlu_delta_points", ""),
                     100 * r["agreement"] if "agreement" in r else "", r.get("letter_kl", ""),
                     r.get("heldout_ppl", ""), r.get("heldout_ppl_ratio", ""), r.get("heldout_kl", "")])
    return rows


def write_retention(payload: dict, out_dir) -> str:
    """results.json, results.csv and retention.png in ``out_dir``; returns the text table."""
    out = Path(out_dir)
    write_json(out / "results.json", payload)
    write_csv(out / "results.csv", HEADER, table_rows(payload))
    plot_retention(payload, out / "retention.png")
    return format_table(HEADER, table_rows(payload))


def plot_retention(payload: dict, path) -> Path:
    plt = plt_agg()
    names = list(payload["variants"])
    panels = [("mmlu_delta_points", "MMLU change (points)"), ("heldout_kl", "KL(base || model), nats/token"),
              ("heldout_ppl_ratio", "held-out ppl / base")]
    panels = [(k, t) for k, t in panels if all(k in payload["variants"][n] for n in names)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.6), dpi=120, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        vals = [payload["variants"][n][key] for n in names]
        ax.bar(names, vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(title, fontsize=10)
        ax.axhline(1.0 if key.endswith("ratio") else 0.0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(payload.get("title", "retention after memorising"), fontsize=11)
    fig.tight_layout()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(path)


# ---- memorising, then keeping the state for the comparison --------------------------------
@dataclass
class Memorised:
    """One method after streaming a text: its scores, and the state needed to evaluate it."""

    method: str
    result: object  # StreamResult
    learner: object | None = None  # kept LoraLearner (adapter still injected) or LocasLearner

    @property
    def peft_model(self):
        return getattr(self.learner, "peft_model", None)

    def release(self) -> None:
        """Remove a kept LoRA adapter from the model (Locas memories need nothing)."""
        if self.learner is not None:
            self.learner.finish()
            self.learner = None


def memorise(lm, method: str, tokens: torch.Tensor, cfg, *, progress: bool = True, keep: bool = True) -> Memorised:
    """Stream ``tokens`` with ``method`` (truncate/full/locas/lora); with ``keep`` the trained state is kept."""
    learner = make_learner(method, lm, cfg)
    try:
        result = stream(learner, tokens, cfg, progress=progress, desc=method)
    except BaseException:
        learner.finish()
        raise
    result.method = method
    kept = Memorised(method, result, learner if learner.trainable else None)
    if not keep:
        kept.release()
    return kept


def variants_for(lm, kept: list[Memorised]) -> list[Variant]:
    """base + one variant per kept Locas memory / LoRA adapter (at most one adapter at a time)."""
    adapters = [k for k in kept if k.peft_model is not None]
    if len(adapters) > 1:
        raise LocasError("only one TempLoRA adapter can be evaluated at a time")
    peft_model = adapters[0].peft_model if adapters else None
    out = [base_variant(lm, peft_model)]
    for k in kept:
        if k.peft_model is not None:
            out.append(lora_variant(lm, k.peft_model, name=k.method))
        elif getattr(k.learner, "memory", None) is not None:
            memory = k.learner.model_memory().detach()  # the output scale baked in, as a saved file has it
            out.append(memory_variant(lm, memory, k.learner.layers, peft_model, name=k.method))
    return out
