"""Settings fields: a dataclass field with its help text and bounds, so config dataclasses are the one
source of CLI flags and of their validation.

``locas.cli.flags`` turns every field made with ``setting`` into an argparse flag (name from the
field or ``flag``, help and default from here, the bounds checked as the flag is parsed), and
``validate`` checks the same bounds when a dataclass is built from code, so a setting is
declared once.

    >>> @dataclass
    ... class GRPOConfig:
    ...     group_size: int = setting(4, "samples per prompt (G)", minimum=1)
    ...     beta: float = setting(0.04, "weight of the KL penalty", flag="--grpo-beta", minimum=0)
    ...     def __post_init__(self):
    ...         validate(self)
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields

from .errors import LocasError


def setting(default=MISSING, help: str = "", *, flag: str | None = None, aliases: tuple[str, ...] = (),
            choices=None, factory=None, cli: bool = True, metavar: str | None = None, minimum=None, maximum=None,
            positive: bool = False, path: str | None = None):
    """A dataclass field documented for the command line.

    ``flag`` overrides the flag name (default ``--field-name``); ``aliases`` are further option
    strings (e.g. the reference launchers' names); ``choices`` limits the values; ``minimum`` /
    ``maximum`` bound a number (inclusive), ``positive`` asks for > 0; ``path`` makes the flag a path
    of that kind (``locas.cli.checks``: checked before any work); ``cli=False`` keeps a field out of
    the command line (set from code only).
    """
    if not help:
        raise ValueError("every setting needs a help text")
    meta = {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": choices, "cli": cli, "metavar": metavar,
            "minimum": minimum, "maximum": maximum, "positive": positive, "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def documented_fields(cls) -> list:
    """The fields of dataclass ``cls`` made with ``setting`` and shown on the command line."""
    return [f for f in fields(cls) if f.metadata.get("cli") and f.metadata.get("help")]


def flag_name(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def bounds_error(meta: dict, value) -> str | None:
    """Why ``value`` breaks the bounds in a setting's metadata (None when it keeps them)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value:
        return "must be a number, got nan"
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if meta.get("positive") and not value > 0:
        return f"must be positive, got {value}"
    if lo is not None and value < lo:
        return f"must be at least {lo}, got {value}"
    if hi is not None and value > hi:
        return f"must be at most {hi}, got {value}"
    return None


def validate(obj) -> None:
    """Check every bounded or choice field of dataclass ``obj``; one-line ``LocasError`` naming the flag."""
    for f in fields(obj):
        if not f.metadata.get("help"):
            continue
        value = getattr(obj, f.name)
        problem = bounds_error(f.metadata, value)
        choices = f.metadata.get("choices")
        if problem is None and choices and value is not None:
            values = value if isinstance(value, (tuple, list)) else [value]
            bad = [v for v in values if v not in choices]
            if bad:
                problem = f"must be one of {', '.join(map(str, choices))}, got {', '.join(map(str, bad))}"
        if problem:
            raise LocasError(f"{flag_name(f)} {problem}")
