"""PG-19 benchmark: truncation vs full attention vs Locas vs TempLoRA, side by side in one process.

Suites (combine with --suite, repeatable):
  main        truncation, Locas r=64 and TempLoRA r=64 at their best swept settings (whole book unless --quick)
  sweep       learning-rate sweep for Locas and TempLoRA at r=64 on the sweep prefix (r=16 and r=11: the ranks suite)
  levers      one lever at a time on the paper recipe (Locas r=64), each with a 4-point lr grid like TempLoRA's:
              output scale law, value init from the gradient, key/gate lr, AdamW beta2, warm-up, value clipping
              radius, a cheaper extra step, updating every 2nd window, width, a learned per-layer output gain
  objectives  Locas r=64 with SD and MIX (teacher context 4 x window)
  init        init ablation at r=64: highest, lowest, random_index, random, activation
  ranks       smaller memories with the same lr sweep each: Locas r=16, TempLoRA r=16, and TempLoRA r=11
              (the LoRA rank with Locas r=64's parameter count: the equal-parameters comparison)
  layers      --memory-layers trade-off (all vs top:N) at r=64: perplexity vs time
  full        full attention (8K context) on the quick prefix
  combos      the levers that helped, combined on the sqrt output scale law (the best one), same grids
  heldout     books 10321, 10356, 10762 (never tuned on): truncation, the tuned preset, the paper recipe, TempLoRA
              r11 (Locas r64's parameter count) and r64 at their sweep lrs; KL(base || each) on 10146's start
  lora-paths  TempLoRA at Locas r=64's parameter count on a layer's attention only, its feed-forward block only, and
              both (--lora-targets attn / mlp / all, the rank set to match), each with the ranks suite's lr grid:
              where TempLoRA's edge over an FFN-only memory lives, before an attention-path memory is built
  memory-paths the same equal-parameters question for Locas: a memory beside the FFN (r=64), on the attention output
              (--memory-on attn, width 96: the same parameter count), on both (width 38; its attention slots at the
              FFN's lr, or at 0.1x it: --attn-lr-scale), and TempLoRA on attention / FFN / all at that count, every
              row with a 6-point lr grid, in one process; then the tuned preset's levers on each path (3 lrs each).
              With --only, the rows of the last run are kept beside the new ones
  timing      time per window of each method on a short prefix (run it alone, e.g. under a CPU lock: the
              quality suites may run beside other work, since their perplexities are deterministic)

    python benchmarks/pg19.py --quick                     # < 15 min: main rows on the first 16K tokens
    python benchmarks/pg19.py --suite sweep --suite init  # ablations on the sweep prefix
    python benchmarks/pg19.py --suite main                # whole book 10146

--model gemma3-270m (after `make models`): the presets take that model's lrs (locas.learn.presets.MODEL_SETTINGS,
from its own sweeps, results/pg19-gemma3-270m-sweep-*.json) and the held-out suite its TempLoRA r11 sweep:

    python benchmarks/pg19.py --model gemma3-270m --suite combos --only '^locas-sqrt-extra256-lr' \
        --lrs 3e-4 1e-3 3e-3 --tag=-gemma3-270m-sweep-sqrt      # sqrt-tail's grid (then renamed as above)
    python benchmarks/pg19.py --model gemma3-270m --suite heldout --max-tokens 32768 --tag=-gemma3-270m

Prints a table with ratios to truncation and writes benchmarks/results/pg19-<suite>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.core.hub import DEFAULT_MODEL, model_key
from locas.data.pg19 import load_book
from locas.eval.pg19 import run_method
from locas.eval.report import format_table, line_plot, markdown_table, scatter_plot, write_json
from locas.learn.config import TrainConfig
from locas.learn.learners import LocasLearner, lora_projections
from locas.learn.presets import TUNED, preset_settings
from locas.text.tokens import tokenize_text

RESULTS = Path(__file__).parent / "results"
LOCAS_LRS = (1e-2, 3e-2, 1e-1)
LORA_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
PATH_LOCAS_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # memory-paths: six points for every row
PATH_LORA_LRS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
LEVER_LRS = (3e-3, 1e-2, 3e-2, 1e-1)  # as many points as TempLoRA's grid
# one lever at a time on the paper recipe (Locas r64): name -> (TrainConfig overrides, lr grid)
LEVERS = {
    "paper": ({}, LEVER_LRS),
    "tau-sqrt": ({"tau_law": "sqrt"}, (1e-3, 3e-3, 1e-2, 3e-2)),  # 8x the output at r64: the grid moves down
    "keys-lr0.1": ({"key_lr_scale": 0.1}, LEVER_LRS),
    "value-grad-init": ({"value_init": "gradient"}, LEVER_LRS),
    "beta2-0.99": ({"adam_beta2": 0.99}, LEVER_LRS),
    "warmup-2": ({"warmup_windows": 2}, LEVER_LRS),
    "radius-2": ({"value_radius": 2.0}, LEVER_LRS),
    "extra-step-512": ({"steps_per_window": 2, "extra_step_tokens": 512}, LEVER_LRS),
    "every-2": ({"update_every": 2}, LEVER_LRS),
    "r16": ({"memory_width": 16}, LEVER_LRS),
    "gain-0.1": ({"gain_lr": 0.1}, LEVER_LRS),  # a learned per-layer output gain
}
SQRT_LRS = (3e-3, 6e-3, 1e-2, 2e-2)  # around tau-sqrt's best lever point, still 4 points
# the levers that helped, on the sqrt law (the best single lever), each with the same grid as sqrt itself
COMBOS = {
    "sqrt": ({"tau_law": "sqrt"}, SQRT_LRS),
    "sqrt-keys3": ({"tau_law": "sqrt", "key_lr_scale": 3.0}, SQRT_LRS),
    "sqrt-radius2": ({"tau_law": "sqrt", "value_radius": 2.0}, SQRT_LRS),
    "sqrt-extra256": ({"tau_law": "sqrt", "steps_per_window": 2, "extra_step_tokens": 256}, SQRT_LRS),
    "sqrt-every2": ({"tau_law": "sqrt", "update_every": 2}, SQRT_LRS),  # the all-layer time lever
    "sqrt-extra128": ({"tau_law": "sqrt", "steps_per_window": 2, "extra_step_tokens": 128}, SQRT_LRS),
    "sqrt-extra256x2": ({"tau_law": "sqrt", "steps_per_window": 3, "extra_step_tokens": 256}, SQRT_LRS),
    "sqrt-gain0.1": ({"tau_law": "sqrt", "gain_lr": 0.1}, SQRT_LRS),
    "sqrt-extra256-gain0.1": ({"tau_law": "sqrt", "steps_per_window": 2, "extra_step_tokens": 256, "gain_lr": 0.1},
                              SQRT_LRS),
}
ONLY = None


def run(lm, tokens, label, method, cfg, rows, curves):
    if ONLY and label != "truncate" and not re.search(ONLY, label):
        return None
    learner = LocasLearner(lm, cfg) if method == "locas" else None
    res = run_method(lm, method, tokens, cfg, label=label, learner=learner)
    rows[label] = {"method": method, "ppl": res.ppl, "wall_s": res.wall_s, "extra_params": res.extra_params,
                   "tokens": res.tokens, "skipped_updates": res.skipped_updates, "config": cfg.to_dict(),
                   "ppl_at": {str(k): v for k, v in res.ppl_at((4096, 8192, 16384, 32768)).items()}}
    curves[label] = res.curve()
    print(f"  {label}: ppl {res.ppl:.3f}  {res.wall_s:.0f} s", flush=True)
    return res


def report(rows, name, base_params, note=""):
    ref = rows.get("truncate")
    table = []
    for label, r in rows.items():
        ratio = r["ppl"] / ref["ppl"] if ref else float("nan")
        rel = r["wall_s"] / ref["wall_s"] if ref else float("nan")
        r.update(ppl_ratio=ratio, rel_time=rel, extra_params_pct=100 * r["extra_params"] / base_params)
        table.append([label, r["ppl"], ratio, r["extra_params"], f"{r['extra_params_pct']:.2f}%", r["wall_s"], rel])
    text = format_table(["run", "ppl", "ppl/trunc", "extra params", "% base", "wall s", "time/trunc"], table)
    print(f"\n== {name} ==\n{text}\n{note}")
    return text


def best(rows, prefix):
    cands = {k: v for k, v in rows.items() if k.startswith(prefix)}
    return min(cands.items(), key=lambda kv: kv[1]["ppl"]) if cands else (None, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", action="append",
                    choices=["main", "sweep", "levers", "combos", "heldout", "objectives", "init", "ranks", "layers",
                             "full", "timing", "lora-paths", "memory-paths"])
    ap.add_argument("--quick", action="store_true", help="main rows on the first 16K tokens (< 15 min)")
    ap.add_argument("--book", default="10146")
    ap.add_argument("--window-size", type=int, default=1024)
    ap.add_argument("--sweep-tokens", type=int, default=6144, help="prefix used by sweep/init/layers/objectives")
    ap.add_argument("--max-tokens", type=int, default=None, help="prefix for the main suite (default: whole book)")
    ap.add_argument("--locas-lr", type=float, default=None, help="main suite Locas lr (default: best from sweep)")
    ap.add_argument("--lora-lr", type=float, default=None)
    ap.add_argument("--tau-scale", type=float, default=None)
    ap.add_argument("--heldout-books", nargs="+", default=["10321", "10356", "10762"],
                    help="heldout suite: books never used for tuning")
    ap.add_argument("--kl-book", default="10146", help="heldout suite: text of the KL(base || method) check")
    ap.add_argument("--kl-tokens", type=int, default=4096)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tag", default="")
    ap.add_argument("--lrs", type=float, nargs="+", default=None,
                    help="levers/combos suites: this lr grid instead of each configuration's own")
    ap.add_argument("--only", default=None, help="regex: run only matching rows (truncation always runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 when sharing the CPU)")
    ap.add_argument("--lever-report", action="store_true",
                    help="only tabulate and plot the levers and combos grids already run (no model)")
    ap.add_argument("--paths-report", action="store_true",
                    help="only tabulate and plot the memory-paths rows already run (no model)")
    ap.add_argument("--heldout-report", action="store_true",
                    help="only tabulate and plot the held-out parts already run (results/pg19-heldout<tag>/, no model)")
    args = ap.parse_args()
    if args.lever_report:
        return lever_report()
    if args.paths_report:
        return paths_report(f"pg19-memory-paths{args.tag}")
    if args.heldout_report:
        return heldout_report(RESULTS / f"pg19-heldout{args.tag}", list(heldout_systems(args.window_size, args.model)),
                              args.heldout_books)
    global ONLY
    ONLY = args.only
    if args.threads:
        torch.set_num_threads(args.threads)
    suites = args.suite or ["main"]
    RESULTS.mkdir(exist_ok=True)
    lm = LocasForCausalLM.from_pretrained(args.model)
    text = load_book(args.book)
    base_params = lm.num_base_parameters()
    W = args.window_size
    swept = _load_sweep() if model_key(args.model) == DEFAULT_MODEL else {}  # pg19-best.json is SmolLM2's sweep
    locas_lr = args.locas_lr or swept.get("locas_lr", preset_settings("paper", args.model)["lr"])
    lora_lr = args.lora_lr or swept.get("lora_lr", 1e-3)
    tau = args.tau_scale or swept.get("tau_scale", 1.0)
    record = {"model": args.model, "book": args.book, "window": W, "threads": torch.get_num_threads()}

    for suite in suites:
        t0 = time.perf_counter()
        if suite == "heldout":
            run_heldout(lm, args)
            print(f"suite heldout took {time.perf_counter() - t0:.0f} s")
            continue
        rows, curves = {}, {}
        n = args.max_tokens if suite == "main" and not args.quick else (
            16384 if suite in ("main", "full") else 4096 if suite == "timing" else args.sweep_tokens)
        tokens = tokenize_text(lm.tokenizer, text, n)
        print(f"\n### suite {suite}: {len(tokens):,} tokens of book {args.book}, window {W}", flush=True)
        run(lm, tokens, "truncate", "truncate", TrainConfig(window_size=W), rows, curves)
        if suite == "main":
            run(lm, tokens, "locas-r64", "locas",
                TrainConfig(window_size=W, lr=locas_lr, memory_width=64, tau_scale=tau), rows, curves)
            run(lm, tokens, "lora-r64", "lora", TrainConfig(window_size=W, lr=lora_lr, lora_rank=64), rows, curves)
        elif suite == "sweep":  # the same number of learning rates for each method, at r=64
            for lr in LOCAS_LRS:
                run(lm, tokens, f"locas-r64-lr{lr:g}", "locas",
                    TrainConfig(window_size=W, lr=lr, memory_width=64), rows, curves)
            for lr in LORA_LRS:
                run(lm, tokens, f"lora-r64-lr{lr:g}", "lora", TrainConfig(window_size=W, lr=lr, lora_rank=64),
                    rows, curves)
            rows.update({k: v for k, v in _load_rows("pg19-sweep-earlier").items() if k not in rows})  # earlier points
            k, v = best(rows, "locas-r64-")
            kl, vl = best(rows, "lora-r64-")
            print(f"best locas: {k} ppl {v['ppl']:.3f}; best lora: {kl} ppl {vl['ppl']:.3f}")
            record["best"] = {"locas_lr": v["config"]["lr"], "lora_lr": vl["config"]["lr"]}
            locas_lr, lora_lr = record["best"]["locas_lr"], record["best"]["lora_lr"]
            write_json(RESULTS / "pg19-best.json", record["best"])
        elif suite in ("levers", "combos"):
            out_path = RESULTS / f"pg19-{suite}{args.tag}.json"
            for name, (over, grid) in (LEVERS if suite == "levers" else COMBOS).items():
                for lr in args.lrs or grid:
                    cfg = TrainConfig(**{"window_size": W, "memory_width": 64, **over, "lr": lr})
                    if run(lm, tokens, f"locas-{name}-lr{lr:g}", "locas", cfg, rows, curves) is not None:
                        write_json(out_path, {**record, "suite": suite, "tokens": len(tokens), "rows": rows})
        elif suite == "objectives":
            for loss in ("NTP", "SD", "MIX"):
                run(lm, tokens, f"locas-r64-{loss}", "locas",
                    TrainConfig(window_size=W, lr=locas_lr, memory_width=64, tau_scale=tau, objective=loss,
                                sd_context=4 * W, sd_topk=64), rows, curves)
        elif suite == "init":
            for init in ("highest", "lowest", "random_index", "random", "activation"):
                run(lm, tokens, f"locas-r64-{init}", "locas",
                    TrainConfig(window_size=W, lr=locas_lr, memory_width=64, tau_scale=tau, memory_init=init),
                    rows, curves)
        elif suite == "ranks":  # each row gets the sweep grid its method got at r=64
            for lr in LOCAS_LRS:
                run(lm, tokens, f"locas-r16-lr{lr:g}", "locas", TrainConfig(window_size=W, lr=lr, memory_width=16),
                    rows, curves)
            for rank in (16, 11):
                for lr in LORA_LRS:
                    run(lm, tokens, f"lora-r{rank}-lr{lr:g}", "lora",
                        TrainConfig(window_size=W, lr=lr, lora_rank=rank), rows, curves)
        elif suite == "lora-paths":  # equal parameters: Locas r=64's count, split by where the adapters sit
            params = lm.memory_parameters(64)
            for targets in ("all", "attn", "mlp"):
                rank = max(1, round(params / lora_params_per_rank(lm, targets)))
                for lr in LORA_LRS:
                    run(lm, tokens, f"lora-{targets}-r{rank}-lr{lr:g}", "lora",
                        TrainConfig(window_size=W, lr=lr, lora_rank=rank, lora_targets=targets), rows, curves)
        elif suite == "memory-paths":  # equal parameters (Locas r=64's), every path of both methods, own lr grids
            params = lm.memory_parameters(64)
            paper, tuned = args.lrs or PATH_LOCAS_LRS, preset_settings(TUNED, args.model)  # the tuned FFN levers too
            for name, recipe, site, attn_lr, grid in (
                    ("locas", {}, "ffn", 1.0, paper), ("locas", {}, "attn", 1.0, paper),
                    ("locas", {}, "both", 1.0, paper), ("locas", {}, "both", 0.1, paper),
                    (f"locas-{TUNED}", tuned, "ffn", 1.0, (3e-3, 1e-2, 3e-2)),
                    (f"locas-{TUNED}", tuned, "attn", 1.0, (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
                    (f"locas-{TUNED}", tuned, "both", 0.1, (3e-3, 1e-2, 3e-2)),
                    (f"locas-{TUNED}", tuned, "both", 0.01, (3e-3, 1e-2, 3e-2))):
                lm.set_site(site)
                width = round(params / lm.memory_parameters(1))
                label = f"{name}-{site}-r{width}" + ("" if attn_lr == 1.0 else f"-attnlr{attn_lr:g}")
                for lr in grid:
                    run(lm, tokens, f"{label}-lr{lr:g}", "locas", TrainConfig(**{
                        "window_size": W, **recipe, "memory_width": width, "memory_on": site, "attn_lr_scale": attn_lr,
                        "lr": lr}), rows, curves)
            lm.set_site("ffn")
            if ONLY:  # a partial run adds to the rows of the last one
                rows.update({k: v for k, v in _load_rows(f"pg19-memory-paths{args.tag}").items() if k not in rows})
            for targets in ("all", "attn", "mlp"):
                rank = max(1, round(params / lora_params_per_rank(lm, targets)))
                for lr in PATH_LORA_LRS:
                    run(lm, tokens, f"lora-{targets}-r{rank}-lr{lr:g}", "lora",
                        TrainConfig(window_size=W, lr=lr, lora_rank=rank, lora_targets=targets), rows, curves)
        elif suite == "layers":
            for layers in ("all", "top:20", "top:15", "top:10", "top:5"):
                run(lm, tokens, f"locas-r64-{layers}", "locas",
                    TrainConfig(window_size=W, lr=locas_lr, memory_width=64, tau_scale=tau, memory_layers=layers),
                    rows, curves)
        elif suite == "full":
            run(lm, tokens, "full-8k", "full", TrainConfig(window_size=W), rows, curves)
        elif suite == "timing":
            for layers in ("all", "top:15", "top:10"):
                run(lm, tokens, f"locas-r64-{layers}", "locas",
                    TrainConfig(window_size=W, lr=locas_lr, memory_width=64, memory_layers=layers), rows, curves)
            for layers in ("all", "top:15", "top:10", "top:8", "top:4"):
                run(lm, tokens, f"locas-{TUNED}-{layers}", "locas",
                    TrainConfig(**{"window_size": W, **preset_settings(TUNED, args.model), "memory_layers": layers}),
                    rows, curves)
            for layers in ("all", "top:8", "top:6"):  # the preset without its tail step
                one_step = {**preset_settings(TUNED, args.model), "steps_per_window": 1, "extra_step_tokens": 0}
                run(lm, tokens, f"locas-sqrt-1step-{layers}", "locas",
                    TrainConfig(**{"window_size": W, **one_step, "memory_layers": layers}), rows, curves)
            run(lm, tokens, "lora-r64", "lora", TrainConfig(window_size=W, lr=lora_lr, lora_rank=64), rows, curves)
            run(lm, tokens, "lora-r11", "lora",
                TrainConfig(window_size=W, lr=best_lora_lr(11, args.model), lora_rank=11), rows, curves)
            run(lm, tokens, "truncate-again", "truncate", TrainConfig(window_size=W), rows, curves)
        table = report(rows, f"{suite} ({len(tokens):,} tokens)", base_params)
        tag = f"pg19-{suite}{'-quick' if args.quick and suite == 'main' else ''}{args.tag}"
        out = {**record, "suite": suite, "tokens": len(tokens), "rows": rows, "table": table,
               "run_s": time.perf_counter() - t0}
        write_json(RESULTS / f"{tag}.json", out)
        if suite == "memory-paths":
            paths_report(tag)
        else:
            line_plot(RESULTS / f"{tag}.png", curves, "tokens read", "cumulative perplexity", title=tag)
        print(f"suite {suite} took {time.perf_counter() - t0:.0f} s -> {RESULTS / (tag + '.json')}")


def lora_params_per_rank(lm, targets: str) -> int:
    """TempLoRA's parameters per unit of rank with ``--lora-targets targets``: the in + out features of every
    projection it adapts."""
    return sum(sum(m.weight.shape) for m in lora_projections(lm, targets).values())


LORA_SWEEPS = {"smollm2-135m": {11: (("pg19-ranks-r11",), "--suite ranks --only lora-r11"),
                                 64: (("pg19-sweep-earlier", "pg19-sweep"), "--suite sweep")},
               "gemma3-270m": {11: (("pg19-gemma3-270m-sweep-lora",), "--model gemma3-270m --suite ranks --only "
                                    "'^lora-r11-lr', saved under that name")}}
# model: rank: (result files, how to make them). gemma3-270m's TempLoRA was swept at r11 only (its equal-parameter
# rank); its Locas presets take their lrs from locas.learn.presets.MODEL_SETTINGS.


def lora_sweeps(model: str) -> dict:
    """``LORA_SWEEPS`` of ``model`` (a packaged model by name, alias or hub id), or a one-line exit."""
    found = LORA_SWEEPS.get(model_key(model))
    if found is None:
        raise SystemExit(f"TempLoRA was not swept on PG-19 for {model} (only {', '.join(LORA_SWEEPS)}); run --model "
                         f"{model} --suite ranks --only '^lora-r11-lr' and add its file to LORA_SWEEPS first")
    return found


def lora_sweep(rank: int, model: str = DEFAULT_MODEL) -> dict:
    """TempLoRA's sweep rows at ``rank`` on book 10146's prefix for ``model``, by label."""
    rows = {k: v for f in lora_sweeps(model)[rank][0] for k, v in _load_rows(f).items()}
    return {k: v for k, v in rows.items() if k.startswith(f"lora-r{rank}-")}


def best_lora_lr(rank: int, model: str = DEFAULT_MODEL) -> float:
    """TempLoRA's best lr at ``rank`` from ``lora_sweep``."""
    row = best(lora_sweep(rank, model), f"lora-r{rank}-")[1]
    if row is None:
        files, make = lora_sweeps(model)[rank]
        raise SystemExit(f"TempLoRA r{rank}'s lr comes from results/{files[-1]}.json; run {make} first")
    return row["config"]["lr"]


def heldout_systems(W: int, model: str = DEFAULT_MODEL) -> dict[str, tuple[str, TrainConfig]]:
    """The held-out comparison on ``model``: truncation, the tuned preset, the paper's recipe (both as that model
    wants them), TempLoRA at equal parameters (r11 ~ Locas r64's count) and, where swept, at r64, each at its
    best lr of the sweeps on book 10146's tuning prefix; and the attention-path memories (``attn``, ``both``) at their
    best row of the memory-paths suite on that prefix, where it was run."""
    systems = {
        "truncate": ("truncate", TrainConfig(window_size=W)),
        f"locas-{TUNED}": ("locas", TrainConfig(**{"window_size": W, **preset_settings(TUNED, model)})),
        "locas-paper": ("locas", TrainConfig(**{"window_size": W, **preset_settings("paper", model)})),
    }
    for rank in lora_sweeps(model):
        systems[f"lora-r{rank}"] = ("lora", TrainConfig(window_size=W, lora_rank=rank, lr=best_lora_lr(rank, model)))
    paths = _load_rows(f"pg19-memory-paths{'' if model_key(model) == DEFAULT_MODEL else '-' + model_key(model)}")
    for site in ("attn", "both"):  # the attention-path memories at Locas r64's parameter count, where swept: the best
        found = {k: v for k, v in paths.items() if re.match(f"locas-({TUNED}-)?{site}-", k)}  # row of either recipe
        label, row = best(found, "locas-")
        if row is not None:
            systems[label.rsplit("-lr", 1)[0]] = ("locas", TrainConfig(**row["config"]))
    return systems


def run_heldout(lm, args) -> None:
    """Each held-out book (never used for tuning) with every system of ``heldout_systems``; after each trainable
    run, KL(base || it) per token on ``--kl-book``'s prefix. One JSON part per (book, system) in
    results/pg19-heldout/, reused when its settings match (the suite resumes), then one table."""
    from locas.eval.retention import heldout_metrics, memorise, variants_for

    W = args.window_size
    parts = RESULTS / f"pg19-heldout{args.tag}"
    parts.mkdir(parents=True, exist_ok=True)
    kl_tokens = tokenize_text(lm.tokenizer, load_book(args.kl_book), args.kl_tokens)
    systems = heldout_systems(W, args.model)
    other_model = {} if model_key(args.model) == DEFAULT_MODEL else {"model": args.model}  # SmolLM2's parts: no key
    for book in args.heldout_books:
        tokens = tokenize_text(lm.tokenizer, load_book(book), args.max_tokens)
        for name, (method, cfg) in systems.items():
            if ONLY and not re.search(ONLY, name):  # (truncation too: two processes can share the systems)
                continue
            path = parts / f"{book}__{name}.json"
            key = {"config": cfg.to_dict(), "method": method, "tokens": len(tokens), "kl_book": args.kl_book,
                   "kl_tokens": len(kl_tokens), **other_model}
            if path.is_file() and same_run(json.loads(path.read_text()).get("key"), key):
                print(f"  {book} {name}: done before ({path.name})")
                continue
            print(f"\n### {book}: {name}, {len(tokens):,} tokens", flush=True)
            kept = memorise(lm, method, tokens, cfg, keep=True)
            try:
                res = kept.result
                row = {"key": key, "book": book, "system": name, "ppl": res.ppl, "wall_s": res.wall_s,
                       "extra_params": res.extra_params, "skipped_updates": res.skipped_updates,
                       "ppl_at": {str(k): v for k, v in res.ppl_at((4096, 8192, 16384, 32768, 65536)).items()},
                       "curve": res.curve()}
                if kept.learner is not None:
                    kl = heldout_metrics(variants_for(lm, [kept]), kl_tokens, W, progress=False)
                    row["kl"] = kl[method]["kl"]
            finally:
                kept.release()
            write_json(path, row)
            print(f"  {book} {name}: ppl {row['ppl']:.3f}  KL {row.get('kl', 0):.4f}  {row['wall_s']:.0f} s",
                  flush=True)
    heldout_report(parts, list(systems), args.heldout_books)


def same_run(stored: dict | None, key: dict) -> bool:
    """``stored`` (a part's key) describes the run ``key`` does: equal, with any setting added to TrainConfig since
    the part was written at its default."""
    if not stored or {k: v for k, v in stored.items() if k != "config"} != {k: v for k, v in key.items()
                                                                            if k != "config"}:
        return False
    defaults = TrainConfig().to_dict()
    return all(stored["config"].get(k, defaults[k]) == v for k, v in key["config"].items())


def heldout_report(parts: Path, systems: list[str], books: list[str]) -> None:
    """Per book and mean: ppl, ratio to truncation, time / truncation, KL; the tuned preset vs TempLoRA r11."""
    rows, table, curves = {}, [], {}
    for book in books:
        for name in systems:
            path = parts / f"{book}__{name}.json"
            if path.is_file():
                rows[(book, name)] = json.loads(path.read_text())
    for book in books:
        ref = rows.get((book, "truncate"))
        for name in systems:
            r = rows.get((book, name))
            if r is None or ref is None:
                continue
            r["ratio"], r["rel_time"] = r["ppl"] / ref["ppl"], r["wall_s"] / ref["wall_s"]
            table.append([book, name, r["ppl"], r["ratio"], r.get("kl", 0.0), r["extra_params"], r["rel_time"]])
            if name != "truncate":  # cumulative perplexity relative to truncation's, so the books share an axis
                xs, ys = r["curve"]
                curves[f"{book} {name}"] = (xs, [y / t for y, t in zip(ys, ref["curve"][1])])
    for name in systems:
        got = [rows[(b, name)] for b in books if "ratio" in rows.get((b, name), {})]
        if len(got) == len(books):
            table.append(["mean", name, sum(r["ppl"] for r in got) / len(got), sum(r["ratio"] for r in got) / len(got),
                          sum(r.get("kl", 0.0) for r in got) / len(got), got[0]["extra_params"],
                          sum(r["rel_time"] for r in got) / len(got)])
    header = ["book", "system", "ppl", "ppl/trunc", "KL held-out", "extra params", "time/trunc"]
    text = format_table(header, table)
    print(f"\n== held-out books ==\n{text}")
    write_json(RESULTS / f"{parts.name}.json", {"books": books, "systems": systems, "table": table,
                                                 "rows": {f"{b}__{n}": r for (b, n), r in rows.items()}})
    (RESULTS / f"{parts.name}.md").write_text(markdown_table(header, table) + "\n")
    line_plot(RESULTS / f"{parts.name}.png", curves, "tokens read", "cumulative perplexity / truncation's",
              title=f"{parts.name}: held-out books, never tuned on")
    frontier_plot(RESULTS / f"{parts.name}-frontier.png", table, f"{parts.name}: held-out books, never tuned on")


def frontier_plot(path: Path, table: list[list], title: str) -> None:
    """Memory against forgetting: perplexity / truncation's over KL(base || method) on the KL book, one colour per
    trained system, a point per book and its mean (the rows of ``heldout_report``'s table)."""
    systems: dict[str, list] = {}
    for book, name, _, ratio, kl, *_ in table:
        if name != "truncate":
            systems.setdefault(name, []).append((kl, ratio, book))
    scatter_plot(path, systems, "KL(base || method) on held-out PG-19 text (log)", "perplexity / truncation's",
                 title, logx=True)


def lever_report() -> None:
    """The lever and combination grids (every results/pg19-levers*.json, pg19-combos*.json) as one table: each
    configuration's best lr and perplexity against the paper recipe and TempLoRA r11 / r64; a plot of the grids."""
    rows = {}
    for path in sorted([*RESULTS.glob("pg19-levers*.json"), *RESULTS.glob("pg19-combos*.json")]):
        record = json.loads(path.read_text())
        if model_key(record.get("model", DEFAULT_MODEL)) == DEFAULT_MODEL:  # the lever table is SmolLM2's
            rows.update(record["rows"])
    grids: dict[str, dict[float, float]] = {}
    for label, r in rows.items():
        m = re.fullmatch(r"locas-(.+)-lr([0-9.e-]+)", label)
        if m:
            grids.setdefault(m.group(1).replace("tau-sqrt", "sqrt"), {})[float(m.group(2))] = r["ppl"]
    sweeps = {rank: lora_sweep(rank) for rank in lora_sweeps(DEFAULT_MODEL)}
    lora = {rank: best(r, f"lora-r{rank}-")[1] for rank, r in sweeps.items()}
    trunc = rows["truncate"]["ppl"]
    paper = min(grids["paper"].values())
    table = []
    for name, grid in grids.items():
        lr, ppl = min(grid.items(), key=lambda kv: kv[1])
        table.append([name, len(grid), f"{lr:g}", ppl, ppl / trunc, 100 * (ppl / paper - 1),
                      100 * (ppl / lora[11]["ppl"] - 1)])
    for rank, r in lora.items():
        points = len(sweeps[rank])
        table.append([f"TempLoRA r{rank}", points, f"{r['config']['lr']:g}", r["ppl"], r["ppl"] / trunc,
                      100 * (r["ppl"] / paper - 1), 100 * (r["ppl"] / lora[11]["ppl"] - 1)])
    header = ["configuration", "lr points", "best lr", "ppl", "ppl/trunc", "% vs paper", "% vs TempLoRA r11"]
    print(format_table(header, table))
    (RESULTS / "pg19-levers.md").write_text(markdown_table(header, table) + "\n")
    series = {name: (sorted(g), [g[k] for k in sorted(g)]) for name, g in grids.items()}
    for rank, r in sweeps.items():
        grid = sorted((v["config"]["lr"], v["ppl"]) for v in r.values()
                      if v["ppl"] < 2 * trunc)  # (a diverged point would flatten the plot)
        series[f"TempLoRA r{rank}"] = ([g[0] for g in grid], [g[1] for g in grid])
    line_plot(RESULTS / "pg19-levers.png", series, "learning rate", "perplexity (first 6,144 tokens of 10146)",
              title="PG-19 levers: each configuration's lr grid", logx=True)


def paths_report(tag: str) -> None:
    """The memory-paths suite as one row per configuration (its best lr) and a plot of perplexity against the lr,
    a line per configuration: ``<tag>.md`` and ``<tag>.png`` from ``<tag>.json``."""
    rows = _load_rows(tag)
    trunc = rows["truncate"]["ppl"]
    grids: dict[str, dict[float, dict]] = {}
    for label, row in rows.items():
        if label != "truncate":
            grids.setdefault(label.rsplit("-lr", 1)[0], {})[row["config"]["lr"]] = row
    table = []
    for name, grid in sorted(grids.items(), key=lambda kv: min(r["ppl"] for r in kv[1].values())):
        lr, row = min(grid.items(), key=lambda kv: kv[1]["ppl"])
        table.append([name, row["extra_params"], len(grid), f"{lr:g}", row["ppl"], row["ppl"] / trunc])
    header = ["configuration", "parameters", "lr points", "best lr", "ppl", "ppl/trunc"]
    print(format_table(header, table))
    (RESULTS / f"{tag}.md").write_text(f"truncation: {trunc:.3f}\n\n" + markdown_table(header, table) + "\n")
    series = {name: ([lr for lr in sorted(g) if g[lr]["ppl"] < 1.1 * trunc],  # a diverged point flattens the plot
                     [g[lr]["ppl"] for lr in sorted(g) if g[lr]["ppl"] < 1.1 * trunc]) for name, g in grids.items()}
    line_plot(RESULTS / f"{tag}.png", series, "learning rate", "perplexity (first 6,144 tokens of 10146)",
              title=f"memory paths at Locas r64's parameter count (truncation {trunc:.2f})", logx=True)


def _load_rows(tag: str) -> dict:
    path = RESULTS / f"{tag}.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else {}


def _load_sweep() -> dict:
    path = RESULTS / "pg19-best.json"
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    main()
