"""``locas memorize FILE -o book.locas``: train a memory on a text file and save it.

    $ locas memorize notes.txt -o notes.locas                   # answerable without the text (selfstudy, default)
    $ locas ask "Who bought the press?" --memory notes.locas    # asked in the format the memory was trained in
    $ locas memorize book.txt -o book.locas --objective ntp     # a long text's wording, window by window

``selfstudy`` (the default) trains the memory to answer probes about every fact of the text with
the text gone (docs/RECALL.md) and records the prompt format it trained in, so ``locas ask`` asks
the same way; ``--recall`` adds a report on held-out, model-written questions. ``--objective
ntp|sd|mix`` stream the text window by window (scored before each update); ``grpo`` reinforces
the memory on cloze questions cut from the text's sentences. ``--budget`` trains for a number of
CPU-seconds instead of a number of passes.
"""

from __future__ import annotations

import argparse

from ...learn.config import TrainConfig
from ...learn.memorize import OBJECTIVE_DEFAULTS
from ...learn.objectives import OBJECTIVE_NAMES, GRPOConfig, SelfStudyConfig
from ...probes.config import ProbeConfig
from ..checks import path_arg
from ..flags import (
    MEMORY,
    OBJECTIVE,
    OPTIMISER,
    WINDOW,
    Number,
    add_memory_arg,
    add_model_args,
    add_output_arg,
    add_recall_preset_arg,
    add_settings,
)

HELP = "memorise a text file into a .locas memory file"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"file": "{text}", "-o": "{out}.locas", "--objective": "ntp", "--max-tokens": "64", "--window-size": "32",
           "--memory-width": "4",
           "--model": "{model}", "--device": "cpu"}
TRAINS = "segments"


def add_arguments(p):
    path_arg(p, "file", kind="text", help="UTF-8 text file to memorise")
    add_output_arg(p, what="memory file (.locas)", kind="file_out", required=True)
    p.add_argument("--max-tokens", type=Number(int, minimum=2), default=None,
                   help="only the first N tokens of the text (default: all)")
    add_memory_arg(p, help="continue training this memory file instead of initialising a fresh one")
    p.add_argument("--init-from", dest="memory", help=argparse.SUPPRESS)  # the name before 0.2
    p.add_argument("--budget", type=Number(float, positive=True), default=None,
                   help="train for this many CPU-seconds of this process (probe making included) instead of a "
                        "number of passes (default: off)")
    add_model_args(p)
    add_settings(p, TrainConfig, title="test-time training", only=WINDOW + OPTIMISER + OBJECTIVE + MEMORY,
                 defaults={"epochs": None, "lr": None, "window_size": None, "objective": "selfstudy"},
                 helps={"objective": f"what the memory learns: {', '.join(OBJECTIVE_NAMES)} (default: selfstudy)",
                        "epochs": "passes over the material: the text's windows (ntp, sd, mix), the probes "
                                  f"(selfstudy) or the cloze questions (grpo) (default: 1; grpo "
                                  f"{OBJECTIVE_DEFAULTS['grpo']['epochs']})",
                        "lr": f"learning rate (AdamW) (default: {OBJECTIVE_DEFAULTS['selfstudy']['lr']} for selfstudy, "
                              f"else {TrainConfig.lr}; ntp on gemma3-270m 1e-2: locas.learn.presets.MODEL_SETTINGS)",
                        "window_size": "tokens per text window: ntp/sd/mix stream them, selfstudy's next-token term "
                                       f"takes one per step (default: {OBJECTIVE_DEFAULTS['selfstudy']['window_size']} "
                                       f"for selfstudy, else {TrainConfig.window_size})"})
    g = add_settings(p, ProbeConfig, title="self-study probes (--objective selfstudy, and --recall)")
    add_recall_preset_arg(add_settings(p, SelfStudyConfig, title="self-study training (--objective selfstudy)"))
    g.add_argument("--heldout-per-chunk", type=Number(int, minimum=0), default=4,
                   help="held-out probes per chunk for the recall report (default: 4)")
    g.add_argument("--heldout-families", default="question",
                   help="probe families of the recall report, never trained on (default: question, written by the "
                        "model with the text in context)")
    g.add_argument("--probe-cache", default=None, help="probe cache JSON (default: OUTPUT.probes.json)")
    g.add_argument("--recall", action=argparse.BooleanOptionalAction, default=None,
                   help="held-out recall report after memorising (default: off)")
    path_arg(g, "--recall-json", kind="file_out", default=None,
             help="where to write the report (default: OUTPUT.recall.json)")
    add_settings(p, GRPOConfig, title="GRPO (--objective grpo)")


def run(args):
    import time

    from ...core.files import load_memory, save_memory
    from ...data.paths import read_text
    from ...errors import LocasError
    from ...learn.memorize import memorize_text, objective_defaults
    from ...learn.objectives import ObjectiveSettings
    from ...probes.config import FAMILIES
    from ...text.tokens import tokenize_text
    from ..flags import load_lm, setting_value, settings_from

    text = read_text(args.file)
    objective = setting_value(args, TrainConfig, "objective").lower()
    unset = {k: v for k, v in objective_defaults(objective, args.model).items()
             if setting_value(args, TrainConfig, k) is None}
    cfg = settings_from(args, TrainConfig, **unset)
    settings = ObjectiveSettings(selfstudy=settings_from(args, SelfStudyConfig), grpo=settings_from(args, GRPOConfig),
                                 probes=settings_from(args, ProbeConfig, seed=cfg.seed))
    selfstudy = cfg.objective == "selfstudy"
    if args.preset and not selfstudy:
        raise LocasError(f"--preset {args.preset} is a recall preset of --objective selfstudy; drop it, or train "
                         "with --objective selfstudy")
    recall = bool(args.recall)
    heldout_families = tuple(f.strip() for f in args.heldout_families.split(",") if f.strip())
    if recall and (not heldout_families or any(f not in FAMILIES for f in heldout_families)):
        raise LocasError(f"unknown --heldout-families '{args.heldout_families}'; choose from {', '.join(FAMILIES)}")
    if recall and args.heldout_per_chunk < 1:
        raise LocasError("--recall needs --heldout-per-chunk >= 1 (or pass --no-recall)")
    if args.max_tokens is not None and args.max_tokens < 2:
        raise LocasError(f"--max-tokens must be at least 2 (or left out for the whole text), got {args.max_tokens}")
    if args.budget is not None and not args.budget > 0:
        raise LocasError(f"--budget must be a positive number of CPU-seconds, got {args.budget}")
    lm = load_lm(args)
    tokens = tokenize_text(lm.tokenizer, text, args.max_tokens)
    if len(tokens) < 2:
        raise LocasError(f"'{args.file}' has {len(tokens)} token(s); a memory needs a text of at least 2 tokens")
    start = load_memory(args.memory, model=lm, strict=not args.no_strict) if args.memory else None
    if start is not None and lm.site != cfg.memory_on:  # the file put the model on its site
        raise LocasError(f"'{args.memory}' is a memory on the {lm.site} path; continue it with --memory-on {lm.site}")
    if args.max_tokens:
        text = lm.tokenizer.decode(tokens)
    train = heldout = None
    c0 = time.process_time()
    if selfstudy or recall:
        from ...probes.cache import build_probe_sets

        cache = args.probe_cache or f"{args.output}.probes.json"
        train, heldout, times = build_probe_sets(lm, text, settings.probes, args.heldout_per_chunk if recall else 0,
                                                 cache, teacher=not selfstudy or settings.selfstudy.loss == "kl",
                                                 heldout_families=heldout_families)
        made = ", ".join(f"{k} {v:.1f} s" for k, v in times.items() if v) or "all from the cache"
        print(f"{len(train)} training probes, {len(heldout)} held-out probes ({made}); cache {cache}")
    budget = max(args.budget - (time.process_time() - c0), 0.0) if args.budget else None  # probe making counts
    result = memorize_text(lm, text, cfg, settings, tokens=tokens, start_memory=start, budget_s=budget,
                           examples=train if selfstudy else None)
    learner, extra = result.learner, _report(lm, result, tokens, cfg, settings, train if selfstudy else None)
    save_memory(learner.full_memory(), args.output, model=lm, layers=learner.layers, init=cfg.memory_init,
                extra={"train": cfg.to_dict(), "source": str(args.file), "tokens": len(tokens), **extra})
    print(f"wrote {args.output} ({learner.extra_params():,} parameters)")
    if recall:
        _recall(lm, learner.full_memory(), heldout, settings.probes, args)


def _ppl_without_and_with(lm, learner, tokens, window):
    """Perplexity of the text without and with the learner's memory."""
    with lm.disabled():
        before = _text_ppl(lm, tokens, window)
    with lm.use_memory(learner.model_memory().detach(), learner.layers):
        after = _text_ppl(lm, tokens, window)
    return before, after


def _report(lm, result, tokens, cfg, settings, examples) -> dict:
    """Print what the run did; returns what the memory file records about it."""
    from ...text.prompts import Prompt

    if result.streamed is not None:
        res = result.streamed
        print(f"{len(tokens):,} tokens, {len(res.window_nll)} windows x {cfg.steps_per_window} steps, "
              f"{res.wall_s:.1f} s, {res.skipped_updates} skipped updates")
        for e, p in enumerate(res.epoch_ppl(), 1):
            print(f"  epoch {e}: streaming perplexity {p:.3f} (scored before each update)")
    else:
        st = result.stats["segments"][0]
        details = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in st.items()
                            if k not in ("epoch", "segment", "cpu_s", "prep_cpu_s", "steps"))
        print(f"{cfg.objective}: {st['steps']} steps in {result.stats['train_s']:.1f} s "
              f"({result.stats['train_cpu_s']:.1f} CPU-s); {details}")
    before, after = _ppl_without_and_with(lm, result.learner, tokens, cfg.window_size)
    print(f"perplexity of the text: {before:.3f} without memory -> {after:.3f} with memory")
    extra = {"objective": cfg.objective}
    if result.streamed is None:
        extra["steps"] = result.steps
    if examples is not None:
        extra.update(probes=len(examples), ntp_weight=settings.selfstudy.ntp_weight,
                     families=",".join(settings.probes.families), probe_loss=settings.selfstudy.loss)
        if settings.probes.prompt_style != "qa":  # what `locas ask` and `locas chat` ask in
            extra["prompt"] = {"style": Prompt.resolve_style(lm.tokenizer, settings.probes.prompt_style),
                               "instruction": settings.probes.instruction}
    return extra


def _recall(lm, memory, heldout, pcfg, args):
    from ...eval.recall import recall_report, recall_table
    from ...eval.report import format_table, write_json

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

    from ...learn.stream import window_spans

    nll, n = 0.0, 0
    for s, e in window_spans(len(tokens), window):
        x = lm.compute_nll(tokens[s:e][None]).detach()
        nll, n = nll + float(x.sum()), n + x.numel()
    return math.exp(nll / n)
