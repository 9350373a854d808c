"""Forgetting benchmark: what memorising a book costs the model elsewhere, Locas vs TempLoRA, in one process.

SmolLM2-135M streams a prefix of PG-19 book 10146 (window 1024, one NTP step per window, constant
lr) once with a Locas-GLU memory (r=64) and once with a TempLoRA adapter (r=64 on every linear
projection). Then base / Locas / TempLoRA are compared on:
  * MMLU 5-shot (letter NLL) on a seeded stratified subset, the same for every method: 5 subjects
    from each of the 4 categories, 6 questions from each (``--subjects-per-category 0`` = all 57),
    with paired agreement and 4-letter KL against the base;
  * perplexity of a prefix of the held-out book 10321 and mean KL(p_base || p_method) per token there;
  * perplexity of the start of the memorised text itself (did it memorise?).

    python benchmarks/forgetting.py --quick        # ~10 min here: 4K tokens, 8 subjects x 2 questions, 1K held-out
    python benchmarks/forgetting.py                # 16K tokens, 20 subjects x 6, 4K held-out: ~20 min on an idle
                                                   # core, 35 min measured here with the cores shared
    python benchmarks/forgetting.py --sweep        # first pick each method's lr on a prefix (same grid size)

Learning rates default to the PG-19 benchmark's (Locas: the paper recipe's lr for the model, 3e-2 on SmolLM2 and 1e-2
on gemma3-270m; TempLoRA 1e-3); ``--sweep`` instead gives
each method the same 3-point grid on ``--sweep-tokens`` and keeps the lowest streaming perplexity.
Writes benchmarks/results/forgetting[-quick].json and a PNG.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.core.files import save_memory
from locas.data.mmlu import categories, load_questions, stratified_subjects
from locas.data.pg19 import load_book
from locas.eval.report import format_table, markdown_table
from locas.eval.retention import heldout_metrics, memorise, retention_report, table_rows, variants_for, write_retention
from locas.learn.config import TrainConfig
from locas.learn.presets import preset_settings
from locas.text.tokens import tokenize_text

RESULTS = Path(__file__).parent / "results"
LOCAS_LRS = (1e-2, 3e-2, 1e-1)
LORA_LRS = (3e-4, 1e-3, 3e-3)


def sweep(lm, tokens, method, grid, make_cfg) -> tuple[float, dict]:
    scores = {}
    for lr in grid:
        state = memorise(lm, method, tokens, make_cfg(lr), keep=False)
        scores[lr] = state.result.ppl
        print(f"  sweep {method} lr {lr:g}: streaming ppl {scores[lr]:.3f}", flush=True)
    return min(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small prefix and MMLU subset (a few minutes)")
    ap.add_argument("--book", default="10146")
    ap.add_argument("--heldout", default="10321")
    ap.add_argument("--max-tokens", type=int, default=None, help="memorised prefix (default 16384; quick 4096)")
    ap.add_argument("--heldout-tokens", type=int, default=None, help="held-out prefix (default 4096; quick 1024)")
    ap.add_argument("--check-tokens", type=int, default=None, help="memorised-text check (default 2048; quick 1024)")
    ap.add_argument("--subjects-per-category", type=int, default=None,
                    help="MMLU subjects drawn (seed 0) from each of the 4 categories (default 5; quick 2; 0 = all 57)")
    ap.add_argument("--limit-per-subject", type=int, default=None, help="MMLU questions per subject (default 6)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--window-size", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=64, help="Locas width r and LoRA rank")
    ap.add_argument("--locas-lr", type=float, default=None,
                    help="default: the paper recipe's lr for --model (3e-2; gemma3-270m 1e-2: locas.learn.presets)")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--sweep", action="store_true", help="pick each method's lr from a 3-point grid first")
    ap.add_argument("--sweep-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: do not fight other jobs for the cores)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/forgetting[-quick])")
    ap.add_argument("--save", default="runs/forgetting", help="where the Locas memory and TempLoRA adapter are saved "
                    "(re-evaluate them with `locas retention --memory ... --adapter ...`)")
    args = ap.parse_args()
    args.locas_lr = args.locas_lr or preset_settings("paper", args.model)["lr"]
    q = args.quick
    n_tokens = args.max_tokens or (4096 if q else 16384)
    n_held = args.heldout_tokens or (1024 if q else 4096)
    n_check = args.check_tokens or (1024 if q else 2048)
    per_subject = args.limit_per_subject or (2 if q else 6)
    per_cat = args.subjects_per_category if args.subjects_per_category is not None else (2 if q else 5)
    subjects = stratified_subjects(per_cat, seed=0) if per_cat else None
    W, r = args.window_size, args.rank
    torch.set_num_threads(max(1, args.threads))
    t_start = time.perf_counter()

    lm = LocasForCausalLM.from_pretrained(args.model)
    tokens = tokenize_text(lm.tokenizer, load_book(args.book), n_tokens)
    held = tokenize_text(lm.tokenizer, load_book(args.heldout), n_held)
    questions = load_questions(subjects, limit_per_subject=per_subject, seed=0)
    dev = load_questions(sorted({x.subject for x in questions}), split="dev") if args.shots else []
    print(f"{lm.name}: memorise {len(tokens):,} tokens of PG-19 {args.book} (window {W}, r={r}); held-out "
          f"{len(held):,} tokens of {args.heldout}; MMLU {args.shots}-shot on {len(questions)} questions "
          f"({per_subject} per subject x {len(questions) // per_subject} subjects, seed 0): {subjects or 'all'}",
          flush=True)

    locas_cfg = lambda lr: TrainConfig(window_size=W, lr=lr, memory_width=r)  # noqa: E731
    lora_cfg = lambda lr: TrainConfig(window_size=W, lr=lr, lora_rank=r)  # noqa: E731
    locas_lr, lora_lr, swept = args.locas_lr, args.lora_lr, {}
    if args.sweep:
        prefix = tokens[: args.sweep_tokens]
        locas_lr, swept["locas"] = sweep(lm, prefix, "locas", LOCAS_LRS, locas_cfg)
        lora_lr, swept["lora"] = sweep(lm, prefix, "lora", LORA_LRS, lora_cfg)

    kept = []
    try:
        t0 = time.perf_counter()
        kept.append(memorise(lm, "locas", tokens, locas_cfg(locas_lr)))
        kept.append(memorise(lm, "lora", tokens, lora_cfg(lora_lr)))
        t_mem = time.perf_counter() - t0
        save = Path(args.save) / ("quick" if q else "full")
        save_memory(kept[0].learner.full_memory(), save / "locas.locas", model=lm, init="highest",
                    extra={"train": locas_cfg(locas_lr).to_dict(), "source": f"pg19/{args.book}",
                           "tokens": len(tokens)})
        kept[1].peft_model.save_pretrained(str(save / "lora"))
        print(f"  saved {save}/locas.locas and {save}/lora/", flush=True)
        for k in kept:
            print(f"  {k.method}: streaming ppl {k.result.ppl:.3f}, {k.result.extra_params:,} params, "
                  f"{k.result.wall_s:.0f} s", flush=True)
        variants = variants_for(lm, kept)
        t0 = time.perf_counter()
        payload = retention_report(variants, lm.tokenizer, held, questions, shots=args.shots, dev=dev, window=W,
                                   cats=categories())
        t_eval = time.perf_counter() - t0
        check = heldout_metrics(variants, tokens[:n_check], W)
    finally:
        for k in kept:
            k.release()

    v = payload["variants"]
    for name, m in check.items():
        v[name].update(memorised_ppl=m["ppl"], memorised_kl=m["kl"])
    payload.update(
        title=f"{lm.name}: after memorising {len(tokens):,} tokens of PG-19 {args.book} (r={r})",
        model=str(lm.name), book=args.book, memorised_tokens=len(tokens), heldout=args.heldout,
        check_tokens=n_check, limit_per_subject=per_subject, subjects_per_category=per_cat,
        subjects=sorted({x.subject for x in questions}),
        lrs={"locas": locas_lr, "lora": lora_lr}, sweep=swept, threads=torch.get_num_threads(),
        streaming={k.method: {"ppl": k.result.ppl, "wall_s": k.result.wall_s, "extra_params": k.result.extra_params,
                              "skipped_updates": k.result.skipped_updates} for k in kept},
        timing_s={"memorise": t_mem, "evaluate": t_eval, "total": time.perf_counter() - t_start})
    stem = Path(args.out) if args.out else RESULTS / ("forgetting-quick" if q else "forgetting")
    header = ["variant", "MMLU %", "dMMLU pts", "agree %", "letter KL", "held-out ppl", "ppl/base", "KL(base||.)",
              "memorised ppl"]
    rows = [row + [v[row[0]]["memorised_ppl"]] for row in table_rows(payload)]
    print("\n" + format_table(header, rows))
    print("\n" + markdown_table(header, rows))

    lo, lc, b = v["lora"], v["locas"], v["base"]
    print(f"\nMMLU change: Locas {lc['mmlu_delta_points']:+.2f} pts, TempLoRA {lo['mmlu_delta_points']:+.2f} pts "
          f"(base {100 * b['mmlu_micro']:.2f} % on {payload['mmlu_questions']} questions); answers changed: "
          f"Locas {100 * (1 - lc['agreement']):.1f} %, TempLoRA {100 * (1 - lo['agreement']):.1f} %")
    print(f"held-out KL: TempLoRA / Locas = {lo['heldout_kl'] / max(lc['heldout_kl'], 1e-12):.2f}x; held-out ppl "
          f"ratio to base: Locas {lc['heldout_ppl_ratio']:.4f}, TempLoRA {lo['heldout_ppl_ratio']:.4f}")
    print(f"memorised-text ppl: base {b['memorised_ppl']:.3f}, Locas {lc['memorised_ppl']:.3f}, "
          f"TempLoRA {lo['memorised_ppl']:.3f}")
    targets = {
        "locas_mmlu_within_0.3": abs(lc["mmlu_delta_points"]) <= 0.3,
        "locas_mmlu_change_smaller_than_lora": abs(lc["mmlu_delta_points"]) < abs(lo["mmlu_delta_points"]),
        "locas_kl_below_lora": lc["heldout_kl"] < lo["heldout_kl"],
    }
    for k, ok in targets.items():
        print(f"  target {k}: {'met' if ok else 'MISSED'}")
    payload["targets"] = targets
    write_retention(payload, stem)
    print(f"\nwrote {stem}/results.json, results.csv, retention.png; total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
