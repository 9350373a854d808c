"""Which prompt a model answers in: the answer cues of the plain prompt, and the qa style, side by side.

On the recall benchmark's tuning documents (``benchmarks/data/recall/``, never the held-out ones), every written
question is asked greedily with the document in the prompt (the teacher) and without it (the base model), in:

  plain               ``locas ask``'s plain prompt as it is (instruction, ``Question: ...``, ``ANSWER_CUE``)
  plain-short-answer  the same ending in `` Short answer:`` (the cue before 2026-12-07)
  qa                  the document, then ``Question: ...\\nAnswer:`` with no instruction (``--probe-style qa``)

and reports the share of greedy answers that contain the reference and the answer-NLL ratio in context / without.
What chose ``ANSWER_CUE`` for models without a chat template (gemma3-270m; docs/RECALL.md):

    flock /tmp/locas-cpu.lock python benchmarks/prompts.py --model gemma3-270m      # ~15 min here

Writes benchmarks/results/prompts-<model>.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.eval.recall import question_examples, recall_report
from locas.eval.report import format_table, write_json
from locas.probes.config import ProbeConfig
from locas.text import prompts
from recall import load_docs  # the recall benchmark's documents (benchmarks/ is on the path of a script run here)

RESULTS = Path(__file__).parent / "results"
STYLES = {"plain": ("plain", prompts.ANSWER_CUE), "plain-short-answer": ("plain", " Short answer:"),
          "qa": ("qa", prompts.ANSWER_CUE)}


def measure(lm, docs: list[dict], style: str, cue: str) -> dict:
    """Questions of every document in ``style`` with ``cue``: contained with / without the document, NLL ratio."""
    prompts.ANSWER_CUE = cue  # what the plain prompt reads when it is built
    try:
        cfg = ProbeConfig(prompt_style=style)
        per_doc = {}
        for d in docs:
            s = recall_report(lm, None, question_examples(lm, d["text"], d["questions"], cfg), cfg,
                              progress=False)["summary"]["all"]
            per_doc[d["id"]] = {k: s[k] for k in ("n", "teacher_contained", "base_contained", "teacher_nll_ratio")}
    finally:
        prompts.ANSWER_CUE = STYLES["plain"][1]
    n = sum(r["n"] for r in per_doc.values())
    return {"per_doc": per_doc, "n": n,
            **{k: sum(r[k] * r["n"] for r in per_doc.values()) / n for k in ("teacher_contained", "base_contained")},
            "teacher_nll_ratio": sum(r["teacher_nll_ratio"] for r in per_doc.values()) / len(per_doc)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="a packaged model (smollm2-135m, gemma3-270m) or a path")
    ap.add_argument("--styles", default=",".join(STYLES), help=f"of {', '.join(STYLES)}")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = LocasForCausalLM.from_pretrained(args.model)
    docs = load_docs("tune", None)
    rows = {}
    for name in args.styles.split(","):
        style, cue = STYLES[name]
        rows[name] = measure(lm, docs, style, cue)
        print(f"{name}: contained {rows[name]['teacher_contained']:.3f} with the document, "
              f"{rows[name]['base_contained']:.3f} without", flush=True)
    header = ["prompt", "questions", "contained, document in prompt", "contained, no document", "NLL ratio in context"]
    print(format_table(header, [[k, r["n"], r["teacher_contained"], r["base_contained"], r["teacher_nll_ratio"]]
                                for k, r in rows.items()]))
    write_json(RESULTS / f"prompts-{Path(args.model).name}.json",
               {"model": args.model, "docs": [d["id"] for d in docs], "rows": rows, "wall_s": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
