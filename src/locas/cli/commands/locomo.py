"""``locas locomo``: memorise LoCoMo conversations and answer their questions, side by side with no memory.

    $ locas locomo --method locas --objective sd --context-mode date_split --conversations conv-26 -o runs/lc
    $ torchrun --nproc-per-node 2 -m locas.cli locomo --conversations all -o runs/lc   # or: --num-gpus 2
"""

from __future__ import annotations

from ...eval.locomo import LOCOMO_PROBES, LocomoSettings
from ...learn.config import TrainConfig
from ...learn.objectives import OBJECTIVE_NAMES, GRPOConfig, SelfStudyConfig
from ...probes.config import ProbeConfig
from .. import flags
from ..flags import add_settings, settings_from

HELP = "LoCoMo QA: memorise each conversation (Locas / LoRA / none), answer its questions, F1 per category"
EXTRA = "eval"  # locas[eval]: checked before any work (locas/extras.py)
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--conversations": "conv-x", "--objective": "ntp", "--window-size": "64", "--memory-width": "4",
           "--max-new-tokens": "2", "-o": "{out}", "--model": "{model}", "--device": "cpu", "--data-dir": "{data}"}
TRAINS = "segments"
DISTRIBUTED = True


def add_arguments(p):
    add_settings(p, LocomoSettings, title="LoCoMo")
    p.add_argument("--conversations", nargs="+", default=["conv-26"],
                   help="sample ids, e.g. conv-26 conv-30, or all (default: conv-26)")
    flags.add_output_arg(p, default="runs/locomo")
    flags.add_resume_arg(p, "the conversations")
    flags.add_model_args(p, data=True)
    flags.add_dist_args(p)
    add_settings(p, TrainConfig, title="test-time training (one segment per session)",
                 only=flags.WINDOW + flags.OPTIMISER + flags.OBJECTIVE + flags.MEMORY + flags.LORA,
                 defaults={"objective": "sd", "sd_context": 2048},
                 helps={"objective": f"what the memory learns from each session: {', '.join(OBJECTIVE_NAMES)} "
                                     "(default: sd)"})
    probe_defaults = {k: v for k, v in LOCOMO_PROBES.to_dict().items()}
    add_settings(p, ProbeConfig, title="self-study probes (--objective selfstudy; asked in the answer prompt)",
                 exclude=("prompt_style",), defaults=probe_defaults)
    add_settings(p, SelfStudyConfig, title="self-study training (--objective selfstudy)")
    add_settings(p, GRPOConfig, title="GRPO (--objective grpo)")


def run(args):
    from pathlib import Path

    from ...data.locomo import get_conversation, load_locomo
    from ...errors import LocasError
    from ...eval.locomo import method_results, run_conversations, write_report
    from ...learn.objectives import ObjectiveSettings
    settings = settings_from(args, LocomoSettings)
    cfg = settings_from(args, TrainConfig)
    objectives = ObjectiveSettings(selfstudy=settings_from(args, SelfStudyConfig), grpo=settings_from(args, GRPOConfig),
                                   probes=settings_from(args, ProbeConfig))
    convs = load_locomo(args.data_dir)
    ids = [c.sample_id for c in convs] if args.conversations == ["all"] else args.conversations
    if len(set(ids)) != len(ids):
        raise LocasError("a conversation is listed twice in --conversations; list each once")
    chosen = [get_conversation(i, conversations=convs) for i in ids]
    with flags.rank_lm(args) as (lm, ctx):
        runs = run_conversations(lm, chosen, settings, cfg, args.output, objectives=objectives, resume=args.resume,
                                 ctx=ctx)
    if runs is None:  # not rank 0: rank 0 writes the report
        return None
    out = Path(args.output)
    methods = method_results(runs, settings, cfg.objective)
    payload = {"model": str(lm.name), "conversations": ids, "settings": settings.to_dict(), "config": cfg.to_dict(),
               "runs": runs}
    table = write_report(out, methods, payload, f"LoCoMo {', '.join(ids)}: {lm.name}")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'f1_by_category.png'}")
    if settings.method == "locas":
        print(f"memories: {out / 'memories'}/<conversation>.locas  (try: locas ask \"{chosen[0].qa[0].question}\" "
              f"--memory {out / 'memories' / (ids[0] + '.locas')})")
