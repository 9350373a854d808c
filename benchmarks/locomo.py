"""LoCoMo benchmark: full context vs no context vs Locas vs TempLoRA, side by side in one process.

SmolLM2-135M on conversations conv-26 and conv-30 (all 304 questions). Rows:

* ``no-memory [full]``        the conversation in the prompt, cut from the front to 8K tokens
* ``no-memory [date_split]``  only the recent window in the prompt (the control for memory + window)
* ``no-memory [none]``        no conversation at all (the control for memory alone)
* ``locas-SD``, ``locas-NTP``, ``lora-SD``: sessions memorised in date order (one pass per session),
  each answered twice with the same memory: ``[date_split]`` (recent window) and ``[none]``.

Every method memorises the same windows with the same optimiser budget; learning rates are the
centres of the PG-19 benchmark's sweep grids (Locas 3e-2, LoRA 1e-3), the same tuning effort for
both (no LoCoMo-specific sweep). Prints the table, the target checks, and writes
``results.json`` / ``results.md`` / ``f1_by_category.png`` to --out. Each finished (method,
conversation) run is kept in ``--out/runs/<method>/parts/`` (Locas memories in ``.../memories/``),
so an interrupted benchmark continues with ``--resume``.

    flock /tmp/locas-cpu.lock python benchmarks/locomo.py            # ~2 h here (SD and LoRA training dominate)
    flock /tmp/locas-cpu.lock python benchmarks/locomo.py --quick    # conv-30: first 6 sessions, their 44 questions

Equal compute instead of one pass (issue 8: NTP vs SD vs self-study with no conversation in the
prompt): ``--session-budget 60 --contexts none --methods locas-NTP locas-SD locas-SELFSTUDY --no-full``
trains every method for 60 CPU-seconds per session (self-study's probe making included).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.data.locomo import get_conversation, load_locomo
from locas.eval.locomo import (
    CONTEXT_MODES,
    LOCOMO_PROBES,
    LocomoSettings,
    collect,
    paired_f1_difference,
    run_conversations,
    summarize,
    timing,
    train_totals,
    write_report,
)
from locas.learn.config import TrainConfig
from locas.learn.memorize import objective_defaults
from locas.learn.objectives import ObjectiveSettings, SelfStudyConfig
from locas.learn.presets import RECALL_PRESETS, preset_settings

RESULTS = Path(__file__).parent / "results" / "locomo"
QUICK_SESSIONS = 6  # conv-30: 6 of 19 sessions (~4.6K tokens), 44 of 105 questions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="conv-30, its first 6 sessions and the questions they answer (< 15 min)")
    ap.add_argument("--conversations", nargs="+", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N questions per conversation")
    ap.add_argument("--max-sessions", type=int, default=None,
                    help="first K sessions of each conversation and only the questions they answer (--quick: 6)")
    ap.add_argument("--window-size", type=int, default=1024, help="memorisation window (sessions are cut to it)")
    ap.add_argument("--sd-context", type=int, default=1536, help="SD teacher context in tokens")
    ap.add_argument("--recent-tokens", type=int, default=1024, help="date_split prompt window")
    ap.add_argument("--memory-width", type=int, default=64)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--locas-lr", type=float, default=None,
                    help="default: the paper recipe's lr for --model (3e-2; gemma3-270m 1e-2: locas.learn.presets)")
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--methods", nargs="+", default=["locas-SD", "lora-SD", "locas-NTP"])
    ap.add_argument("--no-full", action="store_true", help="skip the full-context row")
    ap.add_argument("--contexts", nargs="+", default=["date_split", "none"], choices=CONTEXT_MODES[1:],
                    help="context modes every memory answers in (and the no-memory controls)")
    ap.add_argument("--session-budget", type=float, default=None,
                    help="CPU-seconds of training per session for every method (equal compute), instead of one pass")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default=None)
    ap.add_argument("--resume", action="store_true",
                    help="reuse (method, conversation) runs finished by an earlier run with the same settings")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default; 1 on a busy machine)")
    args = ap.parse_args()
    args.locas_lr = args.locas_lr or preset_settings("paper", args.model)["lr"]
    if args.threads:
        torch.set_num_threads(args.threads)
    ids = args.conversations or (["conv-30"] if args.quick else ["conv-26", "conv-30"])
    limit = args.limit
    contexts = list(dict.fromkeys(args.contexts))
    max_sessions = args.max_sessions or (QUICK_SESSIONS if args.quick else None)
    out = Path(args.out) if args.out else RESULTS / ("quick" if args.quick else "full")
    t_start = time.perf_counter()

    lm = LocasForCausalLM.from_pretrained(args.model)
    convs = load_locomo()
    chosen = [get_conversation(i, conversations=convs) for i in ids]
    common = dict(recent_tokens=args.recent_tokens, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                  limit=limit, max_sessions=max_sessions)
    methods: dict[str, dict] = {}

    def add(label, runs, mode, which, trained=False):
        recs = collect(runs, mode, which)
        methods[f"{label} [{mode}]"] = {"summary": summarize(recs), **timing(runs, mode, which),
                                        **train_totals(runs if trained else None)}

    all_runs: dict[str, list] = {}

    def report(final=False):  # written after every method, so an interrupted run keeps what it measured
        payload = {"model": args.model, "conversations": ids, "limit": limit, "max_sessions": max_sessions,
                   "args": vars(args),
                   "wall_s": time.perf_counter() - t_start, "complete": final, "threads": torch.get_num_threads(),
                   "base_params": lm.num_base_parameters(), "checks": checks(methods, all_runs), "runs": all_runs}
        title = f"LoCoMo {', '.join(ids)}{' (quick)' if args.quick else ''}: {args.model}"
        return payload, write_report(out, methods, payload, title)

    def controls(modes):
        settings = LocomoSettings(method="none", context_mode=modes[0], extra_contexts=tuple(modes[1:]), **common)
        t0 = time.perf_counter()
        runs = run_conversations(lm, chosen, settings, TrainConfig(), out / "runs" / f"no-memory-{'-'.join(modes)}",
                                 resume=args.resume)
        print(f"no-memory {'/'.join(modes)}: {time.perf_counter() - t0:.0f} s", flush=True)
        for mode in modes:
            add("no-memory", runs, mode, "memory")
        # the short-prompt controls pair with every memory row; the full-context row has answers of its mode only
        all_runs["no-memory" if modes == contexts else f"no-memory-{'-'.join(modes)}"] = runs
        report()

    # no-memory rows with a short prompt first (the controls of every memory row); the full context last
    controls(contexts)
    for label in args.methods:
        mtype, loss, preset, lr = parse_method(label)
        fields = preset_settings(preset, args.model) if preset else {}  # a recall preset's fields on the model
        lr = lr or fields.get("lr") or (args.locas_lr if mtype == "locas" else args.lora_lr)
        window = objective_defaults(loss).get("window_size", args.window_size)  # selfstudy: its 256-token NTP term
        skip = ("lr", "epochs") if args.session_budget else ("lr",)  # the budget, else the preset's passes
        shape = {k: v for k, v in fields.items() if k in TrainConfig.__dataclass_fields__ and k not in skip}
        cfg = TrainConfig(window_size=window, lr=lr, objective=loss, memory_width=args.memory_width,
                          lora_rank=args.lora_rank, sd_context=args.sd_context, **shape)
        study = {k: v for k, v in fields.items() if k in SelfStudyConfig.__dataclass_fields__}
        objectives = ObjectiveSettings(selfstudy=SelfStudyConfig(**study), probes=LOCOMO_PROBES) if study else None
        settings = LocomoSettings(method=mtype, context_mode=contexts[0], extra_contexts=tuple(contexts[1:]),
                                  control=False, session_budget=args.session_budget, **common)
        t0 = time.perf_counter()
        runs = run_conversations(lm, chosen, settings, cfg, out / "runs" / label.replace(":", "+"),  # a file name
                                 objectives=objectives, resume=args.resume)
        train = train_totals(runs)
        print(f"{label}: {time.perf_counter() - t0:.0f} s (train {train['train_s']:.0f} s, "
              f"{train['train_cpu_s']:.0f} CPU-s)", flush=True)
        for mode in contexts:
            add(label, runs, mode, "memory", trained=True)
        all_runs[label] = runs
        report()
    if not args.no_full:
        controls(["full"])

    payload, table = report(final=True)
    print("\n" + table)
    for name, (ok, detail) in payload["checks"].items():
        print(f"{'MET ' if ok else 'MISS'}  {name}: {detail}")
    print(f"\nwall time {payload['wall_s'] / 60:.1f} min; wrote {out}/results.json, results.md, f1_by_category.png")


def parse_method(label: str) -> tuple[str, str, str | None, float | None]:
    """``locas-SD`` -> (locas, SD, None, None); ``lora-SD@3e-4`` -> (lora, SD, None, 3e-4): a learning-rate
    override; ``locas-SELFSTUDY:strong`` -> (locas, SELFSTUDY, strong, None): a recall preset of ``locas memorize
    --preset`` (its output scale, silence term and lr on --model, and its passes unless ``--session-budget`` sets
    the compute).
    The objective is any name of the objective registry (``locas info`` lists them), in any case."""
    name, _, lr = label.partition("@")
    name, _, preset = name.partition(":")
    mtype, _, loss = name.partition("-")
    if mtype not in ("locas", "lora") or not loss:
        raise SystemExit(f"method '{label}' is not <locas|lora>-<LOSS>[:preset][@lr], e.g. locas-SD, lora-SD@3e-4 "
                         f"or locas-SELFSTUDY:strong")
    if preset and (preset not in RECALL_PRESETS or loss.lower() != "selfstudy"):
        raise SystemExit(f"method '{label}': a preset is one of {', '.join(RECALL_PRESETS)}, for SELFSTUDY only")
    return mtype, loss, preset or None, float(lr) if lr else None


def checks(methods: dict[str, dict], runs: dict[str, list]) -> dict[str, tuple[bool, str]]:
    """The issue's targets, evaluated on the rows present (with an lr sweep: each method's best row);
    ``runs`` (label -> runs) gives the per-question records for paired confidence intervals."""
    def f1(label, cat):
        return methods.get(label, {}).get("summary", {}).get(cat, {}).get("f1")

    out = {}
    trained = sorted({k.split(" [")[0] for k in methods if not k.startswith("no-memory")})
    for label in (t for t in trained if t.startswith("locas-")):
        for cat in ("single-hop", "multi-hop", "overall"):
            a, b = f1(f"{label} [none]", cat), f1("no-memory [none]", cat)
            if a is not None and b is not None:
                detail = f"{a:.2f} vs {b:.2f} F1"
                if label in runs and "no-memory" in runs:  # issue 19: the paired 95 % interval should exclude zero
                    d, lo, hi = paired_f1_difference(collect(runs[label], "none", "memory"),
                                                     collect(runs["no-memory"], "none", "memory"), cat)
                    detail += f" (paired difference {d:+.2f}, 95% bootstrap CI {lo:+.2f} .. {hi:+.2f})"
                out[f"{label} [none] beats no-memory [none] on {cat}"] = (a > b, detail)

    def best(family, mode):  # (overall F1, label) of a method family's best row over its learning rates
        rows = [(f1(f"{t} [{mode}]", "overall"), t) for t in trained if t.split("@")[0] == family]
        rows = [r for r in rows if r[0] is not None]
        return max(rows) if rows else (None, None)

    (_, ss), (_, ntp) = best("locas-SELFSTUDY", "none"), best("locas-NTP", "none")
    if ss and ntp:
        for cat in ("single-hop", "multi-hop"):
            a, b = f1(f"{ss} [none]", cat), f1(f"{ntp} [none]", cat)
            d, lo, hi = paired_f1_difference(collect(runs[ss], "none", "memory"),
                                             collect(runs[ntp], "none", "memory"), cat)
            out[f"{ss} [none] beats {ntp} [none] on {cat}"] = (
                a > b, f"{a:.2f} vs {b:.2f} F1 (paired difference {d:+.2f}, 95% bootstrap CI {lo:+.2f} .. {hi:+.2f})")

    b, lora = best("lora-SD", "date_split")
    for family in sorted({t.split("@")[0] for t in trained if t.startswith("locas-")}):
        a, loc = best(family, "date_split")
        if loc and lora:
            pa, pb = methods[f"{loc} [date_split]"]["extra_params"], methods[f"{lora} [date_split]"]["extra_params"]
            out[f"{loc} [date_split] beats {lora} [date_split] overall at fewer params"] = (
                a > b and pa < pb, f"{a:.2f} vs {b:.2f} F1 (ratio {a / b if b else float('nan'):.2f}), "
                                   f"{pa:,} vs {pb:,} params")
    return out


if __name__ == "__main__":
    main()
