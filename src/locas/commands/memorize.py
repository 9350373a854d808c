"""``locas memorize FILE -o book.locas``: stream a text file into a memory file."""

from __future__ import annotations

from .common import add_model_args, add_train_args, load_lm, train_config

HELP = "memorise a text file into a .locas memory file"


def add_arguments(p):
    p.add_argument("file", help="UTF-8 text file to memorise")
    p.add_argument("-o", "--output", required=True, help="memory file to write (.locas)")
    p.add_argument("--max-tokens", type=int, default=None, help="only the first N tokens")
    p.add_argument("--init-from", default=None, help="continue training an existing memory file")
    add_model_args(p)
    add_train_args(p, window_size=1024, lr=3e-2)


def run(args):
    from ..data.paths import read_text
    from ..eval.pg19 import tokenize_text
    from ..io import load_memory, save_memory
    from ..train import LocasLearner, stream

    text = read_text(args.file)
    lm = load_lm(args)
    cfg = train_config(args)
    tokens = tokenize_text(lm.tokenizer, text, args.max_tokens)
    start = load_memory(args.init_from, model=lm) if args.init_from else None
    learner = LocasLearner(lm, cfg, memory=start)
    result = stream(learner, tokens, cfg, desc="memorize")
    with lm.use_memory(learner.memory, learner.layers):
        after = _text_ppl(lm, tokens, cfg.window_size)
    with lm.disabled():
        before = _text_ppl(lm, tokens, cfg.window_size)
    save_memory(learner.full_memory(), args.output, model=lm, layers=learner.layers, init=cfg.memory_init,
                extra={"train": cfg.to_dict(), "source": str(args.file), "tokens": len(tokens)})
    print(f"{len(tokens):,} tokens, {len(result.window_nll)} windows x {cfg.steps_per_window} steps, "
          f"{result.wall_s:.1f} s, {result.skipped_updates} skipped updates")
    for e, p in enumerate(result.epoch_ppl(), 1):
        print(f"  epoch {e}: streaming perplexity {p:.3f} (scored before each update)")
    print(f"perplexity of the text: {before:.3f} without memory -> {after:.3f} with memory")
    print(f"wrote {args.output} ({learner.extra_params():,} parameters)")


def _text_ppl(lm, tokens, window):
    import math

    import torch

    from ..train import window_spans

    nll, n = 0.0, 0
    for s, e in window_spans(len(tokens), window):
        with torch.no_grad():
            x = lm.compute_nll(tokens[s:e][None])
        nll, n = nll + float(x.sum()), n + x.numel()
    return math.exp(nll / n)
