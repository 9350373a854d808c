"""``locas locomo``: memorise LoCoMo conversations and answer their questions, side by side with no memory.

    $ locas locomo --memory-type locas --ttt-loss SD --context-mode date_split --conversations conv-26 --out runs/lc
    $ torchrun --nproc-per-node 2 -m locas.cli locomo --conversations all --out runs/lc   # or: --num-gpus 2
"""

from __future__ import annotations

from .common import add_dist_args, add_model_args, add_train_args, maybe_relaunch, rank_lm, train_config

HELP = "LoCoMo QA: memorise each conversation (Locas / LoRA / none), answer its questions, F1 per category"


def add_arguments(p):
    from ..eval.locomo import CONTEXT_MODES, MEMORY_TYPES, TTT_LOSSES

    p.add_argument("--memory-type", "--memory_type", default="locas", choices=MEMORY_TYPES)
    p.add_argument("--ttt-loss", "--ttt_loss", default="SD", type=str.upper, choices=sorted(TTT_LOSSES),
                   help="test-time training loss (default SD)")
    p.add_argument("--context-mode", "--context_mode", default="date_split", choices=CONTEXT_MODES,
                   help="full: whole conversation in the prompt; date_split: recent window only; none: no conversation")
    p.add_argument("--also-context", action="append", default=[], choices=CONTEXT_MODES,
                   help="also answer in this context mode with the same memory (repeatable)")
    p.add_argument("--conversations", nargs="+", default=["conv-26"], help="sample ids, e.g. conv-26 conv-30, or all")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions of each conversation")
    p.add_argument("--max-sessions", type=int, default=None,
                   help="memorise only the first K sessions (by date) and ask only the questions they answer")
    p.add_argument("--session-budget", type=float, default=None,
                   help="train each session for this many CPU-seconds (repeated passes) instead of one pass")
    p.add_argument("--recent-tokens", type=int, default=1024, help="context kept in date_split mode")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit")
    p.add_argument("--batch-size", type=int, default=16, help="questions decoded together on the cached prefix")
    p.add_argument("--prompt-style", default="auto", choices=["auto", "chat", "plain"])
    p.add_argument("--no-control", action="store_true", help="skip the no-memory control answers")
    p.add_argument("--grpo-group-size", type=int, default=4, help="GRPO samples per cloze question")
    p.add_argument("--grpo-beta", type=float, default=0.04, help="GRPO KL weight towards the base model")
    p.add_argument("--grpo-items", type=int, default=6, help="GRPO cloze questions per session")
    p.add_argument("--out", default="runs/locomo", help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="reuse the conversations already finished in <out>/parts and run only the missing ones")
    add_model_args(p)
    add_dist_args(p)
    add_train_args(p, window_size=1024, lr=3e-2, memory_width=64, sd_context=2048)


def run(args):
    from pathlib import Path

    from ..data.locomo import get_conversation, load_locomo
    from ..errors import LocasError
    from ..eval.locomo import LocomoSettings, method_results, run_conversations, write_report
    from ..grpo import GRPOConfig

    convs = load_locomo(args.data_dir)
    ids = [c.sample_id for c in convs] if args.conversations == ["all"] else args.conversations
    if len(set(ids)) != len(ids):
        raise LocasError("a conversation is listed twice in --conversations; list each once")
    chosen = [get_conversation(i, conversations=convs) for i in ids]
    settings = LocomoSettings(memory_type=args.memory_type, ttt_loss=args.ttt_loss, context_mode=args.context_mode,
                              extra_contexts=tuple(args.also_context), recent_tokens=args.recent_tokens,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                              prompt_style=args.prompt_style, limit=args.limit, max_sessions=args.max_sessions,
                              session_budget=args.session_budget, control=not args.no_control,
                              grpo=GRPOConfig(group_size=args.grpo_group_size, beta=args.grpo_beta,
                                              items_per_session=args.grpo_items))
    if args.memory_type != "none" and args.ttt_loss in ("NTP", "SD", "ST", "MIX"):
        args.loss = args.ttt_loss
    cfg = train_config(args)
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise LocasError("--batch-size and --max-new-tokens must be at least 1")
    code = maybe_relaunch(args)
    if code is not None:
        return code
    with rank_lm(args) as (lm, ctx):
        runs = run_conversations(lm, chosen, settings, cfg, args.out, resume=args.resume, ctx=ctx)
    if runs is None:  # not rank 0: rank 0 writes the report
        return None
    out = Path(args.out)
    methods = method_results(runs, settings)
    payload = {"model": str(lm.name), "conversations": ids, "settings": settings.to_dict(), "config": cfg.to_dict(),
               "runs": runs}
    table = write_report(out, methods, payload, f"LoCoMo {', '.join(ids)}: {lm.name}")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'f1_by_category.png'}")
    if args.memory_type == "locas":
        print(f"memories: {out / 'memories'}/<conversation>.locas  (try: locas ask "
              f"{out / 'memories' / (ids[0] + '.locas')} \"{chosen[0].qa[0].question}\")")
