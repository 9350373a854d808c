"""Command-line flags: generated from the config dataclasses, plus the few groups every command shares.

A config dataclass field made with ``locas.settings.setting`` becomes one flag: its name
(``--field-name`` or the field's ``flag``), help text, default, type and choices come from the
field, so a setting is declared once. ``settings_from`` builds the dataclass back from the
parsed arguments. Shared groups: the model (``--model --device --dtype --device-map
--threads``), the data directory, the output, an input memory, torchrun re-launching.

    >>> add_settings(parser, TrainConfig, only=WINDOW + OPTIMISER, defaults={"lr": 3e-2})
    >>> cfg = settings_from(args, TrainConfig)
    >>> add_model_args(parser); add_output_arg(parser, default="runs/pg19", kind="directory")
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from contextlib import contextmanager
from dataclasses import MISSING, fields

from ..errors import LocasError
from ..settings import bounds_error, documented_fields
from .checks import path_arg

# TrainConfig fields by what they are about: a command shows only the groups it uses
WINDOW = ("window_size", "steps_per_window", "extra_step_tokens", "update_every", "epochs")
OPTIMISER = ("lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "warmup_windows", "schedule", "seed")
OBJECTIVE = ("objective", "mix_weight", "sd_context", "sd_topk")
MEMORY = ("memory_width", "memory_init", "memory_layers", "memory_on", "tau_scale", "tau_law", "value_init",
          "value_radius", "key_lr_scale", "attn_lr_scale", "gain_lr")
LORA = ("lora_rank", "lora_alpha", "lora_targets")
FULL = ("full_context",)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: locas pg19: argument --lr: ...``), like every other error."""

    def error(self, message):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def normalize_argv(argv: list[str]) -> list[str]:
    """``--memory_width 64`` -> ``--memory-width 64``: the reference launchers' underscore spelling of every flag."""
    out = []
    for a in argv:
        if a.startswith("--") and "_" in a.split("=", 1)[0]:
            name, eq, value = a.partition("=")
            a = name.replace("_", "-") + eq + value
        out.append(a)
    return out


def _dest(cls, name: str) -> str:
    """The argparse destination of field ``name``: named after the class that declares it, so a subclass
    (``MLPTrainConfig``) reads its inherited fields from the same flags."""
    owner = next(c for c in reversed(cls.__mro__) if name in vars(c).get("__annotations__", {}))
    return f"{owner.__name__}.{name}"


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_settings(parser, cls, *, title: str | None = None, only=None, exclude=(), defaults: dict | None = None,
                 helps: dict | None = None):
    """Add one flag per documented field of dataclass ``cls`` (``only``/``exclude`` pick fields by name;
    ``defaults`` and ``helps`` override this command's defaults and help texts). Returns the argument group."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or (cls.__doc__ or cls.__name__).strip().splitlines()[0])
    defaults = defaults or {}
    for f in documented_fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        meta = f.metadata
        default = defaults.get(f.name, f.default if f.default is not MISSING else f.default_factory())
        flags = [meta["flag"] or "--" + f.name.replace("_", "-"), *meta["aliases"]]
        kind = hints[f.name]
        args = typing.get_args(kind)
        base = next((a for a in args if a is not type(None)), kind) if args and type(None) in args else kind
        text = (helps or {}).get(f.name) or f"{meta['help']} (default: {_show(default)})"
        text = text.replace("%", "%%")  # argparse formats help with %
        kw = {"dest": _dest(cls, f.name), "default": default, "help": text}
        if base is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(base) is tuple or base is tuple:
            if meta["choices"]:  # repeatable choice, e.g. --also-context none
                group.add_argument(*flags, action="append", choices=meta["choices"], **{**kw, "default": None})
            else:  # comma-separated list, parsed by the dataclass
                group.add_argument(*flags, type=str, metavar=meta["metavar"] or "A,B", **kw)
            continue
        metavar = meta["metavar"] or (None if meta["choices"] else {int: "N", float: "X"}.get(base, f.name.upper()))
        kind = Number(base, meta) if base in (int, float) else base
        action = group.add_argument(*flags, type=kind, choices=meta["choices"], metavar=metavar, **kw)
        if meta.get("path"):
            action.path_kind = meta["path"]
    return group


class Number:
    """argparse type of a bounded number: parses ``base`` and checks the bounds of a setting's metadata
    (``minimum``, ``maximum``, ``positive``), so a bad value is a one-line usage error before any work.

        >>> p.add_argument("--max-tokens", type=Number(int, minimum=2))
    """

    def __init__(self, base, meta: dict | None = None, **bounds):
        self.base, self.meta = base, {**(meta or {}), **bounds}
        self.__name__ = base.__name__  # argparse names the type in "invalid int value"

    def __call__(self, text: str):
        value = self.base(text)
        problem = bounds_error(self.meta, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    def bounds(self) -> tuple:
        return self.meta.get("minimum"), self.meta.get("maximum"), bool(self.meta.get("positive"))


def settings_from(args: argparse.Namespace, cls, **overrides):
    """The dataclass ``cls`` from parsed arguments (fields without a flag, or left unset, keep their defaults)."""
    values = {}
    for f in fields(cls):
        dest = _dest(cls, f.name)
        if getattr(args, dest, None) is not None:
            value = getattr(args, dest)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**{**values, **overrides})


def add_preset_arg(p) -> None:
    """``--preset NAME``: a named recipe of training settings (``locas.learn.presets``); flags given win."""
    from ..learn.presets import PRESET_HELP, PRESETS

    shown = "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items())
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help=f"a named recipe of training settings; flags given explicitly override it ({shown}) "
                        "(default: none: each flag's default)")


def add_recall_preset_arg(p) -> None:
    """``--preset NAME`` of ``locas memorize``: a point on the self-study objective's recall / forgetting frontier
    (``locas.learn.presets.RECALL_PRESETS``); flags given win."""
    from ..learn.presets import RECALL_PRESET_HELP, RECALL_PRESETS

    shown = "; ".join(f"{k}: {v}" for k, v in RECALL_PRESET_HELP.items())
    p.add_argument("--preset", choices=list(RECALL_PRESETS), default=None,
                   help=f"a recall / forgetting trade-off for --objective selfstudy (docs/RECALL.md); flags given "
                        f"explicitly override it ({shown}) (default: none: each flag's default, as safe)")


def apply_preset(parser, args: argparse.Namespace, argv: list[str]) -> None:
    """Set on ``args`` what ``--model`` changes in its objective's defaults, then the fields of ``args.preset`` (as
    that model wants them: ``locas.learn.presets.MODEL_SETTINGS``), except those whose flag is in ``argv`` (an
    explicit flag wins)."""
    if not getattr(args, "preset", None) and not hasattr(args, "TrainConfig.objective"):
        return  # a command that trains nothing (and the imports below take torch's)
    from ..learn.config import TrainConfig
    from ..learn.objectives import SelfStudyConfig
    from ..learn.presets import model_settings, preset_settings

    model = getattr(args, "model", None)
    objective = getattr(args, _dest(TrainConfig, "objective"), None)
    fields = model_settings(model, objective) if objective else {}
    if getattr(args, "preset", None):
        fields.update(preset_settings(args.preset, model))
    given = {t.partition("=")[0] for t in argv if t.startswith("--")}
    by_dest = {a.dest: a for a in parser._actions}
    for field, value in fields.items():
        owner = TrainConfig if field in TrainConfig.__dataclass_fields__ else SelfStudyConfig
        action = by_dest.get(_dest(owner, field))
        if action is not None and not given.intersection(action.option_strings):
            setattr(args, action.dest, value)


def setting_value(args: argparse.Namespace, cls, name: str):
    """One parsed setting of ``cls`` (e.g. ``setting_value(args, TrainConfig, "window_size")``)."""
    return getattr(args, _dest(cls, name))


# ---- shared groups -------------------------------------------------------------------------------
def default_threads() -> int:
    """Half the cores (at least one), shared between the processes of a torchrun job: on a shared CPU
    small forwards run far faster than with every core fighting other work."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // 2 // max(local_world, 1))


def add_threads_arg(g) -> None:
    """``--threads`` (every command that runs torch takes it)."""
    g.add_argument("--threads", type=Number(int, minimum=1, maximum=4096), default=None,
                   help=f"torch CPU threads (default: half the cores, split between torchrun processes: "
                        f"{default_threads()} here)")


def add_model_args(p, data: bool = False) -> None:
    g = p.add_argument_group("model and runtime")
    g.add_argument("--model", default="smollm2-135m",
                   help="hub id, local directory, or smollm2-135m (the embedded default) (default: smollm2-135m)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights' dtype; memories stay float32 (default: float32)")
    g.add_argument("--device-map", default=None,
                   help="'auto' spreads a model too large for one GPU over all GPUs (accelerate) (default: none)")
    add_threads_arg(g)
    if data:
        path_arg(g, "--data-dir", kind="dir", default=None,
                 help="data directory with pg19/, locomo/, mmlu/ (default: $LOCAS_DATA_DIR, else ../shared/data)")
    g.add_argument("--verbose", action="store_true",
                   help="also show the libraries' own warnings and progress bars (default: off)")


def add_output_arg(p, *, default=None, what: str = "directory", kind: str = "run_dir", required: bool = False) -> None:
    """``-o/--output`` (``--out`` too) of path kind ``kind`` (locas.cli.checks), and ``--overwrite``."""
    help_ = f"output {what}" + (f" (default: {default})" if default else " (required)" if required else "")
    path_arg(p, "-o", "--output", "--out", kind=kind, dest="output", default=default, required=required, help=help_)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (default: off: an existing one is refused)")


def add_memory_arg(p, *, required: bool = False, repeat: bool = False,
                   help: str = "Locas memory file (.locas)") -> None:
    """``--memory FILE`` (repeatable where several are compared) and ``--no-strict``."""
    if repeat:
        path_arg(p, "--memory", kind="memory", action="append", default=[], help=f"{help}; repeatable (default: none)")
    else:
        path_arg(p, "--memory", kind="memory", default=None, required=required,
                 help=f"{help}" + (" (required)" if required else " (default: none: the plain model)"))
    p.add_argument("--no-strict", action="store_true",
                   help="load a memory made for different weights of the same architecture anyway (default: off)")


def add_dist_args(p) -> None:
    p.add_argument("--num-gpus", type=Number(int, minimum=0, maximum=4096), default=0,
                   help="re-launch through torchrun with N processes (one per GPU; CPU processes without GPUs) "
                        "(default: 0, one process)")


def add_resume_arg(p, what: str) -> None:
    p.add_argument("--resume", action="store_true", help=f"reuse {what} already finished in the output directory "
                                                         "and run only the rest (default: off)")


def maybe_relaunch(args: argparse.Namespace) -> int | None:
    """With ``--num-gpus N`` outside torchrun, re-run the command under torchrun; returns its exit code."""
    from ..distributed import relaunch_with_torchrun, strip_flag

    if getattr(args, "num_gpus", 0) and args.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        argv = getattr(args, "_argv", None) or sys.argv[1:]
        return relaunch_with_torchrun(args.num_gpus, strip_flag(argv, "--num-gpus"))
    return None


@contextmanager
def rank_lm(args: argparse.Namespace):
    """``(lm, ctx)`` for this process: under torchrun the process group is joined (and left on exit)
    and the model sits on this rank's device; without torchrun ``ctx`` is a world of one."""
    from ..distributed import DistContext

    ctx = DistContext.from_env()
    try:
        yield load_lm(args, ctx), ctx
    finally:
        ctx.close()


def check_device(device: str | None) -> None:
    """A CUDA device asked of a torch without CUDA is a clear error, not a traceback."""
    import torch

    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise LocasError(f"--device {device}: this torch has no usable CUDA (a CPU-only build, or no GPU); "
                         "use --device cpu")


def load_lm(args: argparse.Namespace, ctx=None):
    """The model named by ``--model``; under torchrun each rank takes its own device."""
    from ..core.model import LocasForCausalLM

    device = args.device
    if ctx is not None and ctx.world > 1 and device in (None, "cuda"):  # plain "cuda" means this rank's GPU
        device = ctx.device
    check_device(device)
    return LocasForCausalLM.from_pretrained(args.model, dtype=args.dtype, device=device,
                                            device_map=getattr(args, "device_map", None),
                                            memory_on=getattr(args, "memory_on", None) or "ffn")
