"""Composition: what serving two documents' memories together (``"memory": ["a", "b"]``) does to each one's recall.

Side by side in one process on SmolLM2-135M: the first chapters of two PG-19 books (A and B, cut to
``--max-tokens``) are each memorised with self-study (the same width, learning rate and CPU budget),
then each document's **held-out** probes (another seed, never trained on; cloze, template and
model-written questions, asked with no text in the prompt) are answered with

  base     no memory
  own      the document's own memory
  other    the other document's memory (does a memory help or hurt a text it never saw?)
  stacked  both memories at once (``core.memory.stack_memories``: exact sum of their outputs, each with its own tau;
           the same as ``locas stack a.locas b.locas`` and as a request naming both)

and the text perplexity of each document is measured under each. ``kept`` is the share of the own
memory's held-out NLL gain over the base model that the stacked memory keeps:
``(base - stacked) / (base - own)`` (Cartridges reports that composed cartridges keep most of each
one's quality).

    flock /tmp/locas-cpu.lock python benchmarks/compose.py --quick   # ~8 min: 600 tokens each, 40 s budgets
    flock /tmp/locas-cpu.lock python benchmarks/compose.py           # ~16 min: 1500 tokens each, 90 s budgets

Writes benchmarks/results/compose[-quick].json and .png.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from locas import LocasForCausalLM
from locas.core.memory import stack_memories
from locas.data.pg19 import first_chapter, load_book
from locas.eval.recall import recall_report
from locas.eval.report import bar_plot, format_table, markdown_table, write_json
from locas.learn.config import TrainConfig
from locas.learn.memorize import memorize_text
from locas.learn.objectives import ObjectiveSettings, SelfStudyConfig
from locas.probes.cache import build_probe_sets
from locas.probes.config import ProbeConfig
from locas.text.tokens import tokenize_text

RESULTS = Path(__file__).parent / "results"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="600 tokens per document, 40 s budgets")
    p.add_argument("--books", default="10146,10321", help="the two PG-19 books (A,B)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens of each first chapter (1500; quick 600)")
    p.add_argument("--budget", type=float, default=None, help="training CPU seconds per memory (90; quick 40)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-2)
    p.add_argument("--probes-per-chunk", type=int, default=8)
    p.add_argument("--heldout-per-chunk", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    max_tokens = args.max_tokens or (600 if args.quick else 1500)
    budget = args.budget or (40.0 if args.quick else 90.0)
    t_start = time.perf_counter()
    lm = LocasForCausalLM.from_pretrained("smollm2-135m", device="cpu")
    pcfg = ProbeConfig(families=("cloze", "template", "question"), per_chunk=args.probes_per_chunk, answer_tokens=16,
                       seed=0, prompt_style="qa")  # the distillation recipe these results were measured with
    settings = ObjectiveSettings(selfstudy=SelfStudyConfig(loss="kl", ntp_weight=0.1), probes=pcfg)
    cfg = TrainConfig(objective="selfstudy", window_size=512, lr=args.lr, memory_width=args.width, sd_topk=64, seed=0)

    docs = {}
    for name, book in zip("AB", args.books.split(",")):
        tokens = tokenize_text(lm.tokenizer, first_chapter(load_book(book)), max_tokens)
        text = lm.tokenizer.decode(tokens)
        train, heldout, prep = build_probe_sets(lm, text, pcfg, args.heldout_per_chunk, progress=False)
        result = memorize_text(lm, text, cfg, settings, tokens=tokens, budget_s=budget, examples=train, progress=False)
        docs[name] = {"book": book, "tokens": tokens, "heldout": heldout, "memory": result.learner.full_memory(),
                      "prep_s": sum(prep.values()), "train_s": result.train_s}
        print(f"{name}: book {book}, {len(tokens)} tokens, {len(train)} training / {len(heldout)} held-out probes, "
              f"memory trained {result.train_s:.0f} s", flush=True)

    memories = {"base": {n: None for n in "AB"}, "own": {n: docs[n]["memory"] for n in "AB"},
                "other": {"A": docs["B"]["memory"], "B": docs["A"]["memory"]}}
    stacked = stack_memories([docs["A"]["memory"], docs["B"]["memory"]])
    memories["stacked"] = {"A": stacked, "B": stacked}
    results: dict[str, dict] = {}
    for name in "AB":
        doc, base_rows = docs[name], None
        for label, per_doc in memories.items():
            memory = per_doc[name]
            report = recall_report(lm, memory, doc["heldout"], pcfg, base_rows=base_rows, progress=False)
            base_rows = base_rows or report["rows"]["base"]
            with lm.use_memory(memory) if memory is not None else lm.disabled():
                ppl = math.exp(float(lm.compute_nll(doc["tokens"][None]).mean()))
            s = report["summary"]["all"]
            results[f"{name}/{label}"] = {"doc": name, "memory": label, "nll": s["memory_nll"],
                                          "base_nll": s["base_nll"], "teacher_nll": s["teacher_nll"],
                                          "f1": s["memory_f1"], "exact": s["memory_exact"], "text_ppl": ppl}
    kept = {}
    for name in "AB":
        base, own, both = (results[f"{name}/{m}"]["nll"] for m in ("base", "own", "stacked"))
        kept[name] = (base - both) / (base - own) if base > own else float("nan")

    header = ["doc", "memory", "held-out NLL", "F1", "EM", "text ppl"]
    rows = [[r["doc"], r["memory"], r["nll"], r["f1"], r["exact"], r["text_ppl"]] for r in results.values()]
    print(format_table(header, rows))
    for name in "AB":
        print(f"{name}: stacked keeps {kept[name]:.2f} of the own memory's held-out NLL gain over the base; teacher "
              f"(text in context) NLL {results[f'{name}/base']['teacher_nll']:.3f}")
    name = "compose-quick" if args.quick else "compose"
    wall = time.perf_counter() - t_start
    write_json(RESULTS / f"{name}.json", {
        "benchmark": "compose", "model": "smollm2-135m", "config": {**vars(args), "max_tokens": max_tokens,
                                                                     "budget": budget},
        "docs": {n: {"book": d["book"], "tokens": len(d["tokens"]), "heldout": len(d["heldout"]),
                     "prep_s": d["prep_s"], "train_s": d["train_s"]} for n, d in docs.items()},
        "results": results, "kept": kept, "wall_s": wall, "markdown": markdown_table(header, rows)})
    series = {label: [results[f"{n}/{label}"]["nll"] for n in "AB"] for label in memories}
    series["teacher (text in context)"] = [results[f"{n}/base"]["teacher_nll"] for n in "AB"]
    bar_plot(RESULTS / f"{name}.png", [f"doc {n} (book {docs[n]['book']})" for n in "AB"], series,
             ylabel="held-out answer NLL (no text in prompt)", title="two memories stacked vs each alone")
    print(f"wrote {RESULTS / name}.json and .png; total {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
