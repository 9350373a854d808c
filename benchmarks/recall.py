"""Memories that answer: memorise a short document, then answer questions about it with the document gone.

Side by side in one process on SmolLM2-135M-Instruct (or ``--model gemma3-270m``), on our own documents
about invented things (``benchmarks/data/recall/``: four to tune on, three held out and never used to choose
anything),
then asked the document's written questions with *no text in the prompt*, in the prompt format
``locas ask`` uses for such a memory (plain, ``Answer the question with a short phrase.``):

  recall       exactly what ``locas memorize FILE`` does by default: Locas-GLU r64, the self-study
               objective (hard-label cross-entropy on fact probes: every name and number of every
               sentence hidden in turn, three wordings, batches of 8 left-padded probes, + 0.3 x
               next-token loss on a 256-token window per step), one pass, lr 0.1
  ntp          Locas-GLU r64, next-token prediction on the text (passes until the budget)
  lora-recall  TempLoRA r11 (the same number of parameters) with the recall objective
  recall-strong   ``locas memorize --preset strong`` (256x output scale, silence term), 4x recall's CPU-seconds
  recall-balanced ``locas memorize --preset balanced`` (the same, silence 10x stronger), 4x recall's CPU-seconds
  lora-recall-x4  TempLoRA r11, the recall objective, the same 4x
  ...          levers of ``recall`` (``--systems``, e.g. recall-nontp, recall-1wording, recall-kl; ``--define``)

Every system but ``recall`` trains under the CPU-seconds that ``recall`` took on the same document
(``time.process_time`` of this process, probe making included): equal compute. ``--lrs`` sweeps
learning rates per system (the same number of points for each, on the tuning documents).

Metrics per document and their mean: answer NLL with memory / without (``ratio``) and the
with-context ratio (the ceiling: the document in the prompt), the share of questions whose answer
NLL improved, greedy "answer contained" and exact-match rates with memory, without and with the
document in context, CPU-seconds (and per 1,000 tokens), and KL(base || memory) on a held-out PG-19
window, so recall is not bought with forgetting; greedy accuracy on 60 of the memory's own training probes, and
how strongly a Locas memory fires on the document and on that window (``locas.learn.silence.firing``).

    flock /tmp/locas-cpu.lock python benchmarks/recall.py --split tune --lrs "recall=0.1,0.3 ntp=0.03,0.1"
    flock /tmp/locas-cpu.lock python benchmarks/recall.py --split heldout        # ~15 min: the reported table
    flock /tmp/locas-cpu.lock python benchmarks/recall.py --quick                # ~3 min: one document, recall

Writes benchmarks/results/recall[-<model>]-<split>[-name].json, .md and .png (no model part for SmolLM2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.core.hub import model_key
from locas.data.pg19 import load_book
from locas.eval.recall import question_examples, recall_report, student_answers
from locas.eval.report import bar_plot, format_table, markdown_table, scatter_plot, write_json
from locas.eval.retention import base_variant, heldout_metrics, lora_variant, memory_variant
from locas.learn.config import TrainConfig
from locas.learn.memorize import objective_defaults
from locas.learn.objectives import ObjectiveSettings, SelfStudyConfig, make_objective
from locas.learn.presets import preset_settings
from locas.learn.segments import Segment, train_segments
from locas.learn.silence import firing
from locas.probes.config import ProbeConfig
from locas.text.tokens import tokenize_text

DATA = Path(__file__).parent / "data" / "recall"
RESULTS = Path(__file__).parent / "results"
# system -> (method, objective, what differs from the recall defaults); lr comes from --lrs / LRS
SYSTEMS = {
    "recall": ("locas", "selfstudy", {}),
    "ntp": ("locas", "ntp", {}),
    "lora-recall": ("lora", "selfstudy", {}),
    "lora-ntp": ("lora", "ntp", {}),
    "recall-nontp": ("locas", "selfstudy", {"ntp_weight": 0.0}),
    "recall-1wording": ("locas", "selfstudy", {"wordings": 1}),
    "recall-kl": ("locas", "selfstudy", {"loss": "kl"}),
    "recall-w16": ("locas", "selfstudy", {"memory_width": 16}),
    "recall-w256": ("locas", "selfstudy", {"memory_width": 256}),
    "recall-top15": ("locas", "selfstudy", {"memory_layers": "top:15"}),
    "recall-tau2": ("locas", "selfstudy", {"tau_scale": 2.0}),
    "recall-tau4": ("locas", "selfstudy", {"tau_scale": 4.0}),
    "lora-recall-r64": ("lora", "selfstudy", {"lora_rank": 64}),
    # the `locas memorize --preset strong` recipe (RECALL_PRESETS, as the model wants it: MODEL_SETTINGS) for 4x
    # recall's CPU-seconds (about its 3 passes), and TempLoRA with the same objective and the same compute
    "recall-strong": ("locas", "selfstudy", {"preset": "strong", "budget_x": 4}),
    "recall-balanced": ("locas", "selfstudy", {"preset": "balanced", "budget_x": 4}),
    "lora-recall-x4": ("lora", "selfstudy", {"budget_x": 4}),
}
# chosen on the tune split (docs/RECALL.md); lora: every other lora-*
# (a system with a preset: the preset's lr on the model)
LRS = {"recall": 0.1, "ntp": 0.1, "lora": 3e-3, "lora-recall-x4": 1e-3}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="a packaged model (smollm2-135m, gemma3-270m) or a path")
    p.add_argument("--split", default="heldout", choices=("tune", "heldout"))
    p.add_argument("--docs", default=None, help="comma-separated document ids (default: every one of the split)")
    p.add_argument("--systems", default="recall,ntp,lora-recall", help=f"of {', '.join(SYSTEMS)}")
    p.add_argument("--lrs", default="",
                   help='learning rates to sweep, per system: "recall=0.1,0.3 lora-recall=1e-3,3e-3" (default: LRS)')
    p.add_argument("--define", action="append", default=[], metavar="NAME:KEY=V,...",
                   help="a lever of recall to run as system NAME, e.g. quiet:silence_weight=1,tau_scale=4 (keys: "
                        "ntp_weight, loss, silence_weight, silence_tokens, locality_weight, decoy_weight, wordings, "
                        "memory_width, memory_layers, memory_on, attn_lr_scale, tau_scale, tau_law, lora_rank, "
                        "lora_targets; method=lora for TempLoRA; budget_x=N: N x recall's CPU-seconds)")
    p.add_argument("--lora-rank", type=int, default=11, help="TempLoRA rank (11: Locas r64's parameter count)")
    p.add_argument("--ntp-window", type=int, default=1024, help="text window of the ntp systems")
    p.add_argument("--heldout-book", default="10321", help="PG-19 book whose first window measures forgetting")
    p.add_argument("--kl-tokens", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="the first document of the split, the recall system only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="", help="suffix of the result files")
    return p.parse_args()


def define_system(spec: str) -> None:
    """``NAME:key=value,...`` -> a self-study system in SYSTEMS: ``method=lora`` makes it TempLoRA (default Locas),
    ``budget_x=N`` trains it for N x recall's CPU-seconds; the rest are the settings it changes (numbers parsed)."""
    name, _, body = spec.partition(":")
    over: dict = {}
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        try:
            over[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            over[key] = value
    SYSTEMS[name] = (over.pop("method", "locas"), "selfstudy", over)


def load_docs(split: str, ids: str | None) -> list[dict]:
    docs = [json.loads(f.read_text()) for f in sorted(DATA.glob("*.json"))]
    if ids:
        want = ids.split(",")
        docs = [d for d in docs if d["id"] in want]
        if len(docs) != len(want):
            raise SystemExit(f"unknown document in --docs {ids}; have {', '.join(f.stem for f in DATA.glob('*.json'))}")
    else:
        docs = [d for d in docs if d["split"] == split]
    return docs


def system_lrs(name: str, spec: str, model: str) -> list[float]:
    """The learning rates ``--lrs`` gives ``name``, else its preset's on ``model``, else its LRS default."""
    for part in spec.split():
        key, _, values = part.partition("=")
        if key == name:
            return [float(v) for v in values.split(",")]
    preset = SYSTEMS[name][2].get("preset")
    if preset:
        return [preset_settings(preset, model)["lr"]]
    return [LRS[name if name in LRS else "lora" if name.startswith("lora") else "recall"]]


def system_settings(name: str, model: str) -> dict:
    """What system ``name`` changes from the recall defaults on ``model``: a ``preset`` key expands to that recall
    preset's fields as the model wants them (its lr and passes aside: ``--lrs`` and ``budget_x`` set those)."""
    over = dict(SYSTEMS[name][2])
    preset = over.pop("preset", None)
    if preset is None:
        return over
    fields = {k: v for k, v in preset_settings(preset, model).items() if k not in ("lr", "epochs")}
    return {**fields, **over}


def run_system(lm, name: str, lr: float, doc: dict, tokens: torch.Tensor, args, questions, base_rows, kl_tokens,
               budget: float | None):
    """Train ``name`` on the document (``budget`` CPU-seconds, or the recall defaults' one pass) and measure it."""
    method, objective, _ = SYSTEMS[name]
    over = system_settings(name, args.model)
    study = SelfStudyConfig(**{k: v for k, v in over.items() if k in SelfStudyConfig.__dataclass_fields__})
    probes = ProbeConfig(**{k: v for k, v in over.items() if k in ("wordings",)})
    defaults = objective_defaults(objective) if objective == "selfstudy" else {"window_size": args.ntp_window}
    shape = {k: v for k, v in over.items() if k in ("memory_width", "memory_layers", "memory_on", "attn_lr_scale",
                                                     "tau_scale", "tau_law", "lora_rank", "lora_targets")}
    cfg = TrainConfig(**{**defaults, "lr": lr, "lora_rank": args.lora_rank, **shape}, objective=objective, seed=0)
    budget = None if budget is None else budget * over.get("budget_x", 1)
    c0 = time.process_time()
    segment = Segment.from_text(lm.tokenizer, doc["text"], cfg.window_size, tokens=tokens)
    # selfstudy makes its probes itself (SelfStudy.prepare), inside the budget, as `locas memorize` does
    trainer = make_objective(cfg, ObjectiveSettings(selfstudy=study, probes=probes))
    learner, log = train_segments(lm, [segment], trainer, cfg, method=method, passes=cfg.epochs, budget_s=budget,
                                  progress=False, desc=name)
    cpu = time.process_time() - c0
    state = learner.state()
    report = recall_report(lm, state, questions, probes, base_rows=base_rows, progress=False)
    own = own_probe_accuracy(lm, learner, trainer, segment, state) if objective == "selfstudy" else None
    if method == "lora":
        kl = heldout_metrics([base_variant(lm, learner.peft_model), lora_variant(lm, learner.peft_model)], kl_tokens,
                             args.kl_tokens, progress=False)["lora"]["kl"]
        learner.finish()
        fires = {"firing_doc": None, "firing_off": None}
    else:
        kl = heldout_metrics([base_variant(lm), memory_variant(lm, state.memory, state.layers)], kl_tokens,
                             args.kl_tokens, progress=False)["locas"]["kl"]
        fires = {"firing_doc": float(firing(lm, state.memory, state.layers, tokens).mean()),
                 "firing_off": float(firing(lm, state.memory, state.layers, kl_tokens[:args.kl_tokens]).mean())}
    s = report["summary"]["all"]
    return {"system": name, "lr": lr, "doc": doc["id"], "tokens": len(tokens), "steps": log["segments"][0]["steps"],
            "cpu_s": cpu, "cpu_s_per_1k": cpu / len(tokens) * 1000, "params": log["extra_params"], "kl": kl,
            "own_contained": own, **fires,
            "probes": log["segments"][0].get("probes", 0), **{k: s[k] for k in (
                "n", "nll_ratio", "teacher_nll_ratio", "improved", "base_nll", "memory_nll", "teacher_nll",
                "memory_contained", "base_contained", "teacher_contained", "memory_exact", "base_exact")},
            "by_type": _by_type(report, doc), "samples": report["samples"][:10]}


def own_probe_accuracy(lm, learner, objective, segment, state, n: int = 60) -> float:
    """Share of greedy answers containing the reference on ``n`` of the probes the memory was trained on (every
    k-th of them, made again from the same seed): can the memory say what it was taught?"""
    examples = objective.prepare(learner, segment)
    sample = examples[::max(1, len(examples) // n)][:n]
    rows = student_answers(lm, sample, state, ProbeConfig().answer_tokens)
    return sum(r["contained"] for r in rows) / len(rows)


def _by_type(report: dict, doc: dict) -> dict:
    """Answer NLL ratio per question type."""
    out: dict[str, list] = {}
    for q, b, m in zip(doc["questions"], report["rows"]["base"], report["rows"]["memory"]):
        acc = out.setdefault(q.get("type", "other"), [0.0, 0.0, 0])
        acc[0], acc[1], acc[2] = acc[0] + m["nll"], acc[1] + b["nll"], acc[2] + 1
    return {t: {"n": n, "nll_ratio": m / b} for t, (m, b, n) in out.items()}


MEANS = ("nll_ratio", "teacher_nll_ratio", "improved", "memory_contained", "base_contained", "teacher_contained",
         "memory_exact", "base_exact", "cpu_s_per_1k", "kl", "own_contained", "firing_doc", "firing_off")


def _mean(values: list):
    """The mean, or None where a system has no such figure (own probes of an ntp memory, firing of a LoRA)."""
    return None if any(v is None for v in values) else sum(values) / len(values)


def summarise(runs: list[dict]) -> list[dict]:
    """Mean over documents of every (system, lr)."""
    keys = sorted({(r["system"], r["lr"]) for r in runs}, key=lambda k: (list(SYSTEMS).index(k[0]), k[1]))
    out = []
    for system, lr in keys:
        rs = [r for r in runs if r["system"] == system and r["lr"] == lr]
        out.append({"system": system, "lr": lr, "docs": len(rs), "params": rs[0]["params"],
                    **{k: _mean([r.get(k) for r in rs]) for k in MEANS}})
    return out


HEADER = ["system", "lr", "doc", "NLL ratio", "ctx ratio", "improved", "contained mem", "base", "ctx", "EM mem",
          "own probes", "CPU-s/1k tok", "KL pg19", "fires doc", "fires off"]


def row(r: dict, doc: str) -> list:
    return [r["system"], r["lr"], doc, r["nll_ratio"], r["teacher_nll_ratio"], r["improved"], r["memory_contained"],
            r["base_contained"], r["teacher_contained"], r["memory_exact"], _dash(r.get("own_contained")),
            r["cpu_s_per_1k"], r["kl"], _dash(r.get("firing_doc")), _dash(r.get("firing_off"))]


def _dash(value):
    return "-" if value is None else value


def write_results(args, docs: list[dict], runs: list[dict], t_start: float, final: bool = False) -> None:
    """The JSON record, the markdown table and the plot so far (after every run: an interrupted sweep keeps them)."""
    means = summarise(runs)
    rows = [row(r, r["doc"]) for r in runs] + [row(m, "mean") for m in means]
    key = model_key(args.model) or Path(args.model).name  # a packaged model by any of its names, or the folder
    model = "" if key == "smollm2-135m" else f"-{key}"
    stem = f"recall{model}-{args.split}{'-quick' if args.quick else ''}{'-' + args.name if args.name else ''}"
    payload = {"args": vars(args), "runs": runs, "means": means, "wall_s": time.perf_counter() - t_start,
               "complete": final}
    write_json(RESULTS / f"{stem}.json", payload)
    (RESULTS / f"{stem}.md").write_text(markdown_table(HEADER, rows) + "\n")
    if not final:
        return
    print(f"\n{args.split} documents; every system trained for the CPU-seconds of `recall` (the memorize defaults); "
          "questions asked with no text in the prompt:")
    print(format_table(HEADER, rows))
    names = [f"{m['system']}@{m['lr']:g}" for m in means]
    done = [d["id"] for d in docs if any(r["doc"] == d["id"] for r in runs)]
    bar_plot(RESULTS / f"{stem}.png", done + ["mean"],
             {n: [next((r["nll_ratio"] for r in runs if f"{r['system']}@{r['lr']:g}" == n and r["doc"] == d),
                       float("nan")) for d in done] + [m["nll_ratio"]] for n, m in zip(names, means)},
             "answer NLL with memory / without", f"{args.split} documents (lower is better)")
    frontier_plot(RESULTS / f"{stem}-frontier.png", means, args.split)
    print(f"wrote {RESULTS / stem}.json/.md/.png and -frontier.png in {time.perf_counter() - t_start:.0f} s")


def frontier_plot(path: Path, means: list[dict], split: str) -> None:
    """Recall against forgetting: mean answer-NLL ratio over KL on held-out PG-19, one point per (system, lr)."""
    families: dict[str, list] = {}
    for m in means:
        family = "TempLoRA" if SYSTEMS[m["system"]][0] == "lora" else "Locas"
        families.setdefault(family, []).append((m["kl"], m["nll_ratio"], f"{m['system']} {m['lr']:g}"))
    ctx = sum(m["teacher_nll_ratio"] for m in means) / len(means)
    scatter_plot(path, families, "KL(base || memory model) on held-out PG-19 text (log)",
                 "answer NLL with memory / without", f"recall against forgetting, {split} documents (mean)",
                 logx=True, hlines={"document in the prompt": ctx})


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    for spec in args.define:
        define_system(spec)
    systems = ["recall"] if args.quick else args.systems.split(",")
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown system {unknown}; choose from {', '.join(SYSTEMS)}")
    docs = load_docs(args.split, args.docs)[:1 if args.quick else None]
    t_start = time.perf_counter()
    lm = LocasForCausalLM.from_pretrained(args.model, device="cpu")
    kl_tokens = tokenize_text(lm.tokenizer, load_book(args.heldout_book), args.kl_tokens)
    ask = ProbeConfig()  # the prompt format of `locas ask` for a memory from `locas memorize` (plain)
    runs = []
    for doc in docs:
        tokens = tokenize_text(lm.tokenizer, doc["text"])
        questions = question_examples(lm, doc["text"], doc["questions"], ProbeConfig(chunk_tokens=4096))
        base = recall_report(lm, None, questions, ask, progress=False)
        print(f"{doc['id']}: {len(tokens)} tokens, {len(questions)} questions; ctx ratio "
              f"{base['summary']['all']['teacher_nll_ratio']:.3f}", flush=True)
        reference = None  # the CPU-seconds of `recall` at its default lr: every other system's budget
        for name in ["recall"] + [s for s in systems if s != "recall"]:
            lrs = system_lrs(name, args.lrs, args.model)
            if name == "recall" and LRS["recall"] not in lrs:
                lrs = [LRS["recall"], *lrs]
            for lr in lrs:
                r = run_system(lm, name, lr, doc, tokens, args, questions, base["rows"]["base"], kl_tokens,
                               None if name == "recall" else reference)
                if name == "recall" and lr == LRS["recall"]:
                    reference = r["cpu_s"]
                if name in systems:
                    runs.append(r)
                    print(format_table(HEADER, [row(r, doc["id"])]), flush=True)
                    write_results(args, docs, runs, t_start)
    write_results(args, docs, runs, t_start, final=True)


if __name__ == "__main__":
    main()
