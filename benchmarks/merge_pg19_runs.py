"""Merge separate ``locas pg19 --method M --out DIR`` runs of the same book into one benchmark record.

Long whole-book runs are easier to run as one resumable CLI job per method (``--checkpoint-every``,
``--resume``) than as one benchmark process. This puts their results side by side: perplexity,
ratio to truncation, perplexity at fixed token counts, extra parameters, and one curve plot.
Wall times of resumed runs span several processes, so time ratios come from the timing suite.

    python benchmarks/merge_pg19_runs.py runs/main-truncate runs/main-locas runs/main-lora \\
        --out benchmarks/results/pg19-main
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from locas.eval.report import format_table, line_plot, write_json
from locas.learn.stream import StreamResult

CHECKPOINTS = (4096, 8192, 16384, 32768)


def load_run(run_dir: Path) -> dict[str, tuple[dict, StreamResult]]:
    """{method: (summary, per-window result)} of one ``locas pg19`` output directory (one book)."""
    record = json.loads((run_dir / "results.json").read_text())
    books = record["per_book"]
    if len(books) != 1:
        raise SystemExit(f"{run_dir}: expected one book, found {len(books)}")
    out = {}
    for entry in next(iter(books.values())):
        result = StreamResult(method=entry["method"], window_tokens=entry["window_tokens"],
                              window_nll=entry["window_nll"])
        out[entry["method"]] = (record["methods"][entry["method"]], result)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="locas pg19 output directories")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    args = ap.parse_args()
    merged: dict[str, tuple[dict, StreamResult]] = {}
    for run_dir in args.runs:
        merged.update(load_run(run_dir))
    ref = merged.get("truncate")
    rows, table, curves = {}, [], {}
    for method, (summary, result) in merged.items():
        ratio = result.ppl / ref[1].ppl if ref else None
        at = result.ppl_at(CHECKPOINTS)
        rows[method] = {"ppl": result.ppl, "ppl_ratio": ratio, "tokens": sum(result.window_tokens),
                        "extra_params": summary["extra_params"], "extra_params_pct": summary["extra_params_pct"],
                        "skipped_updates": summary.get("skipped_updates", 0),
                        "ppl_at": {str(k): v for k, v in at.items()}}
        table.append([method, result.ppl, ratio if ratio is not None else "", *(at.get(c, "") for c in CHECKPOINTS),
                      summary["extra_params"], f"{summary['extra_params_pct']:.2f}%"])
        curves[method] = result.curve()
    text = format_table(["method", "ppl", "ppl/trunc", *(f"@{c // 1024}K" for c in CHECKPOINTS), "extra params",
                         "% base"], table)
    print(text)
    write_json(args.out.with_suffix(".json"), {"runs": [str(r) for r in args.runs], "rows": rows, "table": text})
    line_plot(args.out.with_suffix(".png"), curves, "tokens read", "cumulative perplexity",
              title=f"PG-19 whole book: {', '.join(merged)}")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
