"""``locas memorize FILE -o book.locas``: stream a text file into a memory file.

    $ locas memorize notes.txt -o notes.locas --epochs 3                       # next-token (default)
    $ locas memorize notes.txt -o notes.locas --objective selfstudy            # answerable without the text
    $ locas ask notes.locas "Who bought the press?"

``--objective ntp|sd|mix`` stream the text with that loss (``--loss`` does the same);
``selfstudy`` distils the model-with-the-text into the memory on probes about it (locas.selfstudy)
and ends with a recall report on held-out probes (``--recall`` adds it to the other objectives).
"""

from __future__ import annotations

import argparse

from ..errors import LocasError
from .common import add_model_args, add_train_args, load_lm, train_config

HELP = "memorise a text file into a .locas memory file"


def add_arguments(p):
    p.add_argument("file", help="UTF-8 text file to memorise")
    p.add_argument("-o", "--output", required=True, help="memory file to write (.locas)")
    p.add_argument("--max-tokens", type=int, default=None, help="only the first N tokens")
    p.add_argument("--init-from", default=None, help="continue training an existing memory file")
    p.add_argument("--objective", choices=["ntp", "sd", "mix", "selfstudy"], default=None,
                   help="ntp | sd | mix stream the text with that loss; selfstudy distils answers to probes "
                        "about it (default: --loss, i.e. ntp)")
    add_model_args(p)
    add_train_args(p, window_size=1024, lr=3e-2)
    g = p.add_argument_group("self-study (--objective selfstudy, and --recall)")
    g.add_argument("--families", default="cloze,template,question",
                   help="probe families, comma-separated: cloze, template, question, instruction, summary")
    g.add_argument("--chunk-tokens", type=int, default=512, help="document chunk the teacher reads per probe")
    g.add_argument("--probes-per-chunk", type=int, default=12, help="cap on training probes per chunk")
    g.add_argument("--heldout-per-chunk", type=int, default=4, help="held-out probes per chunk for the recall report")
    g.add_argument("--samples", type=int, default=4, help="sampled generations per chunk for model-written probes")
    g.add_argument("--probe-style", choices=["qa", "plain", "chat"], default="qa",
                   help="how probes are asked: qa = 'Question: ...\\nAnswer:'; plain | chat = the prompt of "
                        "`locas ask --prompt-style plain|chat` (train in the format you will ask in)")
    g.add_argument("--answer-tokens", type=int, default=24, help="teacher answer length in tokens")
    g.add_argument("--teacher-topk", type=int, default=64, help="teacher logits kept per answer token")
    g.add_argument("--ntp-weight", type=float, default=0.1, help="weight of next-token loss on the raw text")
    g.add_argument("--probe-batch", type=int, default=8, help="probes per optimiser step")
    g.add_argument("--probe-epochs", type=int, default=8, help="passes over the probes")
    g.add_argument("--student-window", type=int, default=0,
                   help="tokens of the chunk's end the student also sees (0 = only the probe)")
    g.add_argument("--budget", type=float, default=0.0, help="train for this many seconds instead of epochs")
    g.add_argument("--probe-cache", default=None, help="probe cache JSON (default: OUTPUT.probes.json)")
    g.add_argument("--recall", action=argparse.BooleanOptionalAction, default=None,
                   help="held-out recall report after memorising (default: on for selfstudy)")
    g.add_argument("--recall-json", default=None, help="where to write the report (default: OUTPUT.recall.json)")


def probe_config(args):
    from ..selfstudy import ProbeConfig

    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    return ProbeConfig(families=families, chunk_tokens=args.chunk_tokens, per_chunk=args.probes_per_chunk,
                       samples=args.samples, answer_tokens=args.answer_tokens, topk=args.teacher_topk,
                       seed=args.seed, prompt_style=args.probe_style)


def run(args):
    from ..data.paths import read_text
    from ..eval.pg19 import tokenize_text
    from ..io import load_memory, save_memory

    text = read_text(args.file)
    if args.objective in ("ntp", "sd", "mix"):
        args.loss = args.objective.upper()
    selfstudy = args.objective == "selfstudy"
    recall = selfstudy if args.recall is None else args.recall
    pcfg = probe_config(args) if selfstudy or recall else None  # validate flags before loading the model
    if recall and args.heldout_per_chunk < 1:
        raise LocasError("--recall needs --heldout-per-chunk >= 1 (or pass --no-recall)")
    lm = load_lm(args)
    cfg = train_config(args)
    tokens = tokenize_text(lm.tokenizer, text, args.max_tokens)
    start = load_memory(args.init_from, model=lm) if args.init_from else None
    if args.max_tokens:
        text = lm.tokenizer.decode(tokens)
    train = heldout = None
    if pcfg is not None:
        from ..selfstudy import build_probe_sets

        cache = args.probe_cache or f"{args.output}.probes.json"
        train, heldout, times = build_probe_sets(lm, text, pcfg, args.heldout_per_chunk if recall else 0, cache)
        made = ", ".join(f"{k} {v:.1f} s" for k, v in times.items() if v) or "all from the cache"
        print(f"{len(train)} training probes, {len(heldout)} held-out probes ({made}); cache {cache}")
    if selfstudy:
        learner, extra = _selfstudy(lm, tokens, cfg, args, train, start)
    else:
        learner, extra = _stream(lm, tokens, cfg, start)
    save_memory(learner.full_memory(), args.output, model=lm, layers=learner.layers, init=cfg.memory_init,
                extra={"train": cfg.to_dict(), "source": str(args.file), "tokens": len(tokens), **extra})
    print(f"wrote {args.output} ({learner.extra_params():,} parameters)")
    if recall:
        _recall(lm, learner.full_memory(), heldout, pcfg, args)


def _ppl_without_and_with(lm, learner, tokens, window):
    """Perplexity of the text without and with the learner's memory."""
    with lm.disabled():
        before = _text_ppl(lm, tokens, window)
    with lm.use_memory(learner.memory, learner.layers):
        after = _text_ppl(lm, tokens, window)
    return before, after


def _stream(lm, tokens, cfg, start):
    from ..train import LocasLearner, stream

    learner = LocasLearner(lm, cfg, memory=start)
    result = stream(learner, tokens, cfg, desc="memorize")
    before, after = _ppl_without_and_with(lm, learner, tokens, cfg.window_size)
    print(f"{len(tokens):,} tokens, {len(result.window_nll)} windows x {cfg.steps_per_window} steps, "
          f"{result.wall_s:.1f} s, {result.skipped_updates} skipped updates")
    for e, p in enumerate(result.epoch_ppl(), 1):
        print(f"  epoch {e}: streaming perplexity {p:.3f} (scored before each update)")
    print(f"perplexity of the text: {before:.3f} without memory -> {after:.3f} with memory")
    return learner, {"objective": cfg.loss.lower()}


def _selfstudy(lm, tokens, cfg, args, train, start):
    from ..selfstudy import train_memory

    learner, log = train_memory(lm, tokens, cfg, "selfstudy", train, ntp_weight=args.ntp_weight,
                                batch=args.probe_batch, student_window=args.student_window,
                                epochs=args.probe_epochs, budget_s=args.budget or None, start_memory=start)
    before, after = _ppl_without_and_with(lm, learner, tokens, cfg.window_size)
    print(f"self-study: {len(train)} probes, {log.steps} steps in {log.wall_s:.1f} s, loss {log.losses[0]:.3f} -> "
          f"{log.losses[-1]:.3f}, {log.skipped} skipped updates")
    print(f"perplexity of the text: {before:.3f} without memory -> {after:.3f} with memory")
    return learner, {"objective": "selfstudy", "probes": len(train), "ntp_weight": args.ntp_weight,
                     "families": args.families}


def _recall(lm, memory, heldout, pcfg, args):
    from ..eval.report import format_table, write_json
    from ..selfstudy import recall_report, recall_table

    report = recall_report(lm, memory, heldout, pcfg)
    header, rows = recall_table(report)
    print("recall on held-out probes, asked with no text in the prompt "
          "(ctx = base model with the chunk in context; NLL of the reference answer):")
    print(format_table(header, rows))
    path = args.recall_json or f"{args.output}.recall.json"
    write_json(path, {"summary": report["summary"], "samples": report["samples"], "memory": str(args.output)})
    print(f"wrote {path}")


def _text_ppl(lm, tokens, window):
    import math

    from ..train import window_spans

    nll, n = 0.0, 0
    for s, e in window_spans(len(tokens), window):
        x = lm.compute_nll(tokens[s:e][None]).detach()
        nll, n = nll + float(x.sum()), n + x.numel()
    return math.exp(nll / n)
