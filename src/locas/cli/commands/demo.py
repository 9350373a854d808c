"""``locas demo`` (what ``make demo`` runs): the main job on the embedded model and real data.

SmolLM2-135M reads the start of PG-19 book 10146 through a short window, once with plain
context truncation and once with a Locas memory trained as it reads; prints the side-by-side
table, writes the perplexity curve, then fuses the memory into a plain checkpoint and checks
that it gives the same logits, and saves/reloads the memory file.
"""

from __future__ import annotations

from ...learn.config import TrainConfig
from ..checks import path_arg
from ..flags import Number, add_model_args, add_output_arg, add_settings, settings_from

HELP = "main demo: SmolLM2 reads a PG-19 book with truncation vs Locas, then fuses the memory"
EXTRA = "eval"  # locas[eval]: checked before any work (locas/extras.py)
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--book": "{text}", "--max-tokens": "64", "--window-size": "32", "--memory-width": "4", "-o": "{out}",
           "--model": "{model}", "--device": "cpu", "--data-dir": "{data}"}


def add_arguments(p):
    path_arg(p, "--book", kind="book", default="10146", help="PG-19 id or text file (default: 10146)")
    p.add_argument("--max-tokens", type=Number(int, minimum=2), default=12288,
                   help="tokens of the book to read (default: 12288)")
    add_settings(p, TrainConfig, title="test-time training", only=("window_size", "memory_width", "lr"),
                 defaults={"window_size": 512})
    add_output_arg(p, default="runs/demo")
    add_model_args(p, data=True)


def run(args):
    import time
    from pathlib import Path

    import torch

    from ...core.files import load_memory, save_memory
    from ...data.pg19 import load_book
    from ...eval.pg19 import print_summary, run_method, write_pg19_report
    from ...learn.learners import make_learner
    from ...text.tokens import tokenize_text
    from ..flags import load_lm

    cfg = settings_from(args, TrainConfig)
    t0 = time.perf_counter()
    lm = load_lm(args)
    print(f"loaded {lm.name}: {lm.config.model_type}, {lm.num_layers} layers, d={lm.hidden_size}, "
          f"{lm.num_base_parameters() / 1e6:.1f}M params in {time.perf_counter() - t0:.1f} s")
    tokens = tokenize_text(lm.tokenizer, load_book(args.book, args.data_dir), args.max_tokens)
    print(f"PG-19 book {args.book}: first {len(tokens):,} tokens, window {cfg.window_size}, "
          f"Locas-GLU r={cfg.memory_width}, lr {cfg.lr}, NTP, 1 step per window, {torch.get_num_threads()} thread(s)")
    results = {"truncate": [run_method(lm, "truncate", tokens, cfg)]}
    learner = make_learner("locas", lm, cfg)
    results["locas"] = [run_method(lm, "locas", tokens, cfg, learner=learner)]
    out = Path(args.output)
    payload = write_pg19_report(out, lm, [args.book], cfg, results, max_tokens=args.max_tokens)
    print()
    print_summary(payload)
    print(f"plot: {out / 'ppl_curve.png'}  table: {out / 'results.csv'}")

    # fused checkpoint: same logits as the memory model
    memory = learner.full_memory()
    probe = tokens[-cfg.window_size:][None]
    with torch.no_grad():
        with lm.disabled():
            base_nll = lm.compute_nll(probe).mean().item()
        mem_logits = lm(probe.to(lm.device), memory=memory).logits
        mem_nll = lm.compute_nll(probe, memory).mean().item()
        dense = lm.to_dense(memory)
        dense_logits = dense(probe.to(lm.device)).logits
    diff = (dense_logits - mem_logits).abs().max().item()
    print(f"\nlast window, mean NLL per token: {base_nll:.4f} without memory, {mem_nll:.4f} "
          f"with memory (it has read this window)")
    print(f"fused checkpoint (intermediate {lm.intermediate_size} -> {dense.config.intermediate_size}): "
          f"max |logit difference| vs memory model = {diff:.2e} {'OK' if diff <= 1e-4 else 'MISMATCH'}")
    path = save_memory(memory, out / "book.locas", model=lm, init=cfg.memory_init)
    same = torch.equal(load_memory(path, model=lm), memory.cpu())
    print(f"memory file {path} ({path.stat().st_size / 1e6:.1f} MB) reloads bit-exact: {same}")
    if diff > 1e-4 or not same:
        raise SystemExit(1)
