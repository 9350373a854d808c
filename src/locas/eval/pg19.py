"""PG-19 whole-book online language modelling: several methods side by side on the same tokens.

Every method reads the book through the same windows and scores the same tokens (see
docs/SCORING.md); only what it keeps between windows differs.

    >>> payload = run_pg19(lm, ["10146"], ["truncate", "locas"], cfg, out_dir="runs/pg19", max_tokens=16384)
    >>> payload["methods"]["locas"]["ppl"], payload["methods"]["locas"]["rel_time"]
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.pg19 import book_path, load_book
from ..distributed import DistContext, run_sharded
from ..learn.config import TrainConfig
from ..learn.learners import make_learner
from ..learn.stream import StreamResult, stream
from ..text.tokens import tokenize_text
from .report import format_table, line_plot, write_csv, write_json

CHECKPOINTS = (4096, 8192, 16384, 32768, 65536, 131072, 200000)
PG19_METHODS = ("truncate", "full", "locas", "lora")


def run_method(lm, method: str, tokens: torch.Tensor, cfg: TrainConfig, *, label: str | None = None,
               checkpoint_dir=None, checkpoint_every: int = 0, resume: bool = False,
               progress: bool = True, learner=None) -> StreamResult:
    """One method over one token stream (adapters are removed afterwards); ``learner`` runs a given one."""
    learner = learner or make_learner(method, lm, cfg)
    try:
        result = stream(learner, tokens, cfg, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                        resume=resume, progress=progress, desc=label or method)
    finally:
        learner.finish()
    result.method = label or method
    return result


def summarize(results: dict[str, list[StreamResult]], base_params: int) -> dict[str, dict]:
    """Pool each method's books: ppl over all tokens, time relative to truncation."""
    out = {}
    for name, parts in results.items():
        nll = sum(sum(r.window_nll) for r in parts)
        n = sum(r.tokens for r in parts)
        ppl_at: dict[int, float] = {}
        if len(parts) == 1:
            ppl_at = parts[0].ppl_at(CHECKPOINTS)
        out[name] = {
            "ppl": math.exp(nll / max(n, 1)),
            "tokens": n,
            "extra_params": max(r.extra_params for r in parts),
            "extra_params_pct": 100.0 * max(r.extra_params for r in parts) / base_params,
            "wall_s": sum(r.wall_s for r in parts),
            "skipped_updates": sum(r.skipped_updates for r in parts),
            "ppl_at": {str(k): v for k, v in ppl_at.items()},
        }
    ref = out.get("truncate", {}).get("wall_s")
    for v in out.values():
        v["rel_time"] = v["wall_s"] / ref if ref else None
        v["ppl_ratio_to_truncate"] = v["ppl"] / out["truncate"]["ppl"] if "truncate" in out else None
    return out


def book_stem(book: str, data_dir=None) -> str:
    return Path(book_path(book, data_dir)).stem


def run_pg19(lm, books: list[str], methods: list[str], cfg: TrainConfig, out_dir, *, max_tokens: int | None = None,
             data_dir=None, checkpoint_every: int = 0, resume: bool = False, progress: bool = True,
             ctx: DistContext | None = None) -> dict | None:
    """Run ``methods`` on each book; write results.json / results.csv / ppl_curve.png to ``out_dir``.

    Under torchrun the (book, method) units are sharded across ranks; rank 0 gathers and writes
    the report (other ranks return None). Each finished unit is also kept as
    ``parts/<book>__<method>.json``; with ``resume`` those are reused and only missing units run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    units = [(book, method) for book in books for method in methods]
    tokens_cache: dict[str, torch.Tensor] = {}

    def work(unit) -> dict:
        book, method = unit
        if book not in tokens_cache:  # one book in memory at a time
            tokens_cache.clear()
            tokens_cache[book] = tokenize_text(lm.tokenizer, load_book(book, data_dir), max_tokens)
        res = run_method(lm, method, tokens_cache[book], cfg, label=method,
                         checkpoint_dir=out / "ckpt" / book_stem(book, data_dir) / method,
                         checkpoint_every=checkpoint_every, resume=resume, progress=progress)
        return res.to_dict()

    done = run_sharded(ctx, units, work, name=lambda u: f"{u[0]} / {u[1]}",
                       part=lambda u: f"{book_stem(u[0], data_dir)}__{u[1]}", parts_dir=out / "parts", resume=resume,
                       fingerprint={"model": str(lm.name), "config": cfg.to_dict(), "max_tokens": max_tokens})
    if done is None:
        return None
    results: dict[str, list[StreamResult]] = {m: [] for m in methods}
    for (_, method), res in zip(units, done):
        results[method].append(StreamResult(**res))
    return write_pg19_report(out, lm, books, cfg, results, max_tokens=max_tokens)


def write_pg19_report(out: Path, lm, books, cfg: TrainConfig, results: dict[str, list[StreamResult]],
                      max_tokens=None) -> dict:
    summary = summarize(results, lm.num_base_parameters())
    payload = {"model": str(lm.name), "books": list(books), "max_tokens": max_tokens, "config": cfg.to_dict(),
               "base_params": lm.num_base_parameters(), "methods": summary,
               "per_book": {m: [r.to_dict() for r in rs] for m, rs in results.items()}}
    write_json(out / "results.json", payload)
    cps = sorted({int(k) for v in summary.values() for k in v["ppl_at"]})
    header = ["method", *[f"ppl@{c}" for c in cps], "ppl", "extra_params", "extra_params_pct", "wall_s", "rel_time"]
    rows = [[m, *[v["ppl_at"].get(str(c), "") for c in cps], v["ppl"], v["extra_params"], v["extra_params_pct"],
             v["wall_s"], v["rel_time"] if v["rel_time"] is not None else ""] for m, v in summary.items()]
    write_csv(out / "results.csv", header, rows)
    if len(books) == 1:
        line_plot(out / "ppl_curve.png", {m: rs[0].curve() for m, rs in results.items()},
                  xlabel="tokens read", ylabel="cumulative perplexity",
                  title=f"PG-19 {Path(str(books[0])).stem}: {lm.name}, window {cfg.window_size}")
    return payload


def print_summary(payload: dict) -> str:
    rows = [[m, v["ppl"], v.get("ppl_ratio_to_truncate") or "", v["extra_params"], f"{v['extra_params_pct']:.2f}%",
             v["wall_s"], v["rel_time"] or ""] for m, v in payload["methods"].items()]
    table = format_table(["method", "ppl", "ppl/trunc", "extra params", "% of base", "wall s", "rel time"], rows)
    print(table)
    return table
