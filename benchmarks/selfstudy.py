"""Self-study vs NTP vs SD vs MIX: memorise a text so the model answers questions about it without it.

Side by side in one process on SmolLM2-135M, one Locas-GLU memory width and one learning rate
for every objective (no per-objective tuning), and the same training budget each, counted in CPU
seconds of this process (``time.process_time``, one thread), so that other work on the machine
does not shorten one objective's budget more than another's:

  ntp        next-token prediction on the text's windows
  sd         self-distillation from the base model reading a 4x longer context (the streaming SD)
  mix        ntp + sd
  selfstudy  KL to the base model *with the chunk in context* on probes about the text (its own
             answer tokens, cached top-k logits) + 0.1 x ntp on the text (locas.learn.objectives.selfstudy)

Text: (b) the first chapter of PG-19 book 10146 (``locas.data.pg19.first_chapter``). Held-out
probes (another seed, never trained on; cloze, template and model-written questions) are asked
with *no text in the prompt*; we report the mean answer NLL with the memory, the share of the
base-model -> with-context-teacher NLL gap it closes, and exact/F1 of greedy answers. Probe
making and teacher answers are a one-off preparation cost, reported separately ("prep s").
With ``--ablate`` self-study is also trained on one probe family at a time (half budget) to see
which family helps most. Part (a), LoCoMo, is not run here (see docs/SELFSTUDY.md).

    flock /tmp/locas-cpu.lock python benchmarks/selfstudy.py --quick   # ~5 min: 1/3 of the chapter
    flock /tmp/locas-cpu.lock python benchmarks/selfstudy.py           # ~20 min: the chapter, 4 x 90 s + ablation

Writes benchmarks/results/selfstudy[-quick].json and .png (held-out answer NLL per family).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.core.files import atomic_write
from locas.data.pg19 import first_chapter, load_book
from locas.eval.recall import recall_report
from locas.eval.report import bar_plot, format_table, markdown_table, write_json
from locas.learn.config import TrainConfig
from locas.learn.objectives import ObjectiveSettings, SelfStudyConfig, make_objective
from locas.learn.segments import Segment, train_segments
from locas.probes.cache import build_probe_sets
from locas.probes.config import ProbeConfig
from locas.text.tokens import tokenize_text

RESULTS = Path(__file__).parent / "results"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a third of the chapter, 45 s per objective")
    p.add_argument("--book", default="10146")
    p.add_argument("--budget", type=float, default=None,
                   help="training CPU seconds of this process per objective (90; quick 45)")
    p.add_argument("--max-tokens", type=int, default=None, help="cut the chapter (quick: 1000 tokens)")
    p.add_argument("--objectives", default="ntp,sd,mix,selfstudy")
    p.add_argument("--families", default="cloze,template,question")
    p.add_argument("--width", type=int, default=64, help="memory width r (all objectives)")
    p.add_argument("--lr", type=float, default=3e-2, help="learning rate (all objectives)")
    p.add_argument("--window", type=int, default=512, help="text window of ntp/sd/mix (and selfstudy's ntp term)")
    p.add_argument("--probes-per-chunk", type=int, default=8)
    p.add_argument("--heldout-per-chunk", type=int, default=3)
    p.add_argument("--answer-tokens", type=int, default=16)
    p.add_argument("--ntp-weight", type=float, default=0.1)
    p.add_argument("--ablate", action=argparse.BooleanOptionalAction, default=None,
                   help="also train self-study on each family alone (default: on unless --quick)")
    p.add_argument("--reuse-probes", action="store_true", help="reuse the probe cache of a previous run")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared, busy CPU)")
    p.add_argument("--out", default=None, help="result name in benchmarks/results/ (default selfstudy[-quick])")
    return p.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    budget = args.budget or (45.0 if args.quick else 90.0)
    max_tokens = args.max_tokens or (1000 if args.quick else None)
    ablate = (not args.quick) if args.ablate is None else args.ablate
    t_start = time.perf_counter()
    lm = LocasForCausalLM.from_pretrained("smollm2-135m", device="cpu")
    text = first_chapter(load_book(args.book))
    tokens = tokenize_text(lm.tokenizer, text, max_tokens)
    text = lm.tokenizer.decode(tokens)
    families = tuple(args.families.split(","))
    pcfg = ProbeConfig(families=families, per_chunk=args.probes_per_chunk, answer_tokens=args.answer_tokens, seed=0,
                       prompt_style="qa")  # the distillation recipe measured here (the new default: docs/RECALL.md)
    cache = RESULTS / f"selfstudy{'-quick' if args.quick else ''}.probes.json"
    if not args.reuse_probes:
        cache.unlink(missing_ok=True)  # measure the preparation cost afresh
    train, heldout, prep = build_probe_sets(lm, text, pcfg, args.heldout_per_chunk, cache)
    prep_s = sum(prep.values())
    print(f"{len(tokens)} tokens; {len(train)} training probes, {len(heldout)} held-out probes; prep {prep_s:.0f} s")
    segment = Segment.from_text(lm.tokenizer, text, args.window, tokens=tokens)
    settings = ObjectiveSettings(selfstudy=SelfStudyConfig(ntp_weight=args.ntp_weight, loss="kl"), probes=pcfg)

    base = recall_report(lm, None, heldout, pcfg, progress=False)
    runs = {}
    plan = [(o, o, families, budget) for o in args.objectives.split(",")]
    if ablate:
        plan += [(f"selfstudy[{f}]", "selfstudy", (f,), budget / 2) for f in families]
    for label, objective, fams, seconds in plan:
        pick = [e for e in train if e.family in fams]
        cfg = TrainConfig(window_size=args.window, lr=args.lr, memory_width=args.width, sd_topk=64, seed=0,
                          objective=objective)
        learner, log = train_segments(lm, [segment], make_objective(cfg, settings), cfg, budget_s=seconds,
                                      examples=pick if objective == "selfstudy" else None, desc=label)
        steps = log["segments"][0]["steps"]
        memory = learner.full_memory()
        report = recall_report(lm, memory, heldout, pcfg, base_rows=base["rows"]["base"], progress=False)
        with lm.use_memory(memory):
            ppl = math.exp(float(lm.compute_nll(tokens[None]).mean()))
        runs[label] = {"objective": objective, "families": list(fams), "budget_s": seconds, "steps": steps,
                       "train_s": log["train_s"], "train_cpu_s": log["train_cpu_s"],
                       "prep_s": prep_s if objective == "selfstudy" else 0.0, "text_ppl": ppl,
                       "summary": report["summary"], "samples": report["samples"][:12]}
        s = report["summary"]["all"]
        print(f"{label}: {steps} steps, held-out NLL {s['memory_nll']:.3f} (gap closed {s['gap_closed']:.2f}), "
              f"F1 {s['memory_f1']:.3f}, text ppl {ppl:.2f}")
        del learner
    with lm.disabled():
        base_ppl = math.exp(float(lm.compute_nll(tokens[None]).mean()))
    s0 = base["summary"]["all"]
    header = ["objective", "steps", "train s", "prep s", "NLL no-ctx", "gap closed", "F1", "EM", "text ppl"]
    rows = [["base (no memory)", 0, 0.0, 0.0, s0["base_nll"], 0.0, s0["base_f1"], s0["base_exact"], base_ppl],
            ["teacher (text in context)", 0, 0.0, 0.0, s0["teacher_nll"], 1.0, s0["teacher_f1"], float("nan"),
             float("nan")]]
    for label, r in runs.items():
        s = r["summary"]["all"]
        rows.append([label, r["steps"], r["train_s"], r["prep_s"], s["memory_nll"], s["gap_closed"],
                     s["memory_f1"], s["memory_exact"], r["text_ppl"]])
    print(f"\nheld-out probes ({len(heldout)}) on {len(tokens)} tokens of book {args.book}, width {args.width}, "
          f"lr {args.lr}, {budget:.0f} s of training per objective:")
    print(format_table(header, rows))
    fam_names = [f for f in base["summary"] if f != "all"]
    fam_header = ["objective"] + [f"{f} gap closed" for f in fam_names] + [f"{f} F1" for f in fam_names]
    fam_rows = [[label] + [r["summary"][f]["gap_closed"] for f in fam_names] +
                [r["summary"][f]["memory_f1"] for f in fam_names] for label, r in runs.items()]
    print(format_table(fam_header, fam_rows))
    verdict = {}
    if "ntp" in runs and "selfstudy" in runs:
        t = s0["teacher_nll"]
        gap_ntp = runs["ntp"]["summary"]["all"]["memory_nll"] - t
        gap_ss = runs["selfstudy"]["summary"]["all"]["memory_nll"] - t
        verdict = {"remaining_gap_ntp": gap_ntp, "remaining_gap_selfstudy": gap_ss,
                   "ratio": gap_ss / gap_ntp if gap_ntp > 0 else float("nan"),
                   "target_met": gap_ntp > 0 and gap_ss <= 0.5 * gap_ntp}
        print(f"remaining NLL gap to the teacher: ntp {gap_ntp:.3f}, selfstudy {gap_ss:.3f} "
              f"(ratio {verdict['ratio']:.2f}; target <= 0.5: {'met' if verdict['target_met'] else 'missed'})")
    name = args.out or f"selfstudy{'-quick' if args.quick else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    wall = time.perf_counter() - t_start
    write_json(RESULTS / f"{name}.json", {
        "config": {**vars(args), "budget": budget, "max_tokens": max_tokens, "tokens": len(tokens),
                   "train_probes": len(train), "heldout_probes": len(heldout), "probe_cfg": pcfg.to_dict()},
        "base": {"summary": s0, "text_ppl": base_ppl, "by_family": base["summary"]}, "runs": runs,
        "verdict": verdict, "prep_s": prep, "wall_s": wall})
    md = (markdown_table(header, rows) + "\n\n" + markdown_table(fam_header, fam_rows) + "\n")
    atomic_write(RESULTS / f"{name}.md", lambda tmp: Path(tmp).write_text(md))
    series = {"base": [base["summary"][f]["base_nll"] for f in ["all"] + fam_names],
              "teacher": [base["summary"][f]["teacher_nll"] for f in ["all"] + fam_names]}
    series.update({label: [r["summary"][f]["memory_nll"] for f in ["all"] + fam_names] for label, r in runs.items()})
    bar_plot(RESULTS / f"{name}.png", ["all"] + fam_names, series, ylabel="held-out answer NLL (no text in prompt)",
             title=f"book {args.book}: memorised with each objective, {budget:.0f} s each")
    print(f"wrote {RESULTS / name}.json, .md and .png; total {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
