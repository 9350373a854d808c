"""Settings fields: a dataclass field with its help text, so config dataclasses are the one source of CLI flags.

``locas.cli.flags`` turns every field made with ``setting`` into an argparse flag (name from the
field or ``flag``, help and default from here), so a setting is declared once.

    >>> @dataclass
    ... class GRPOConfig:
    ...     group_size: int = setting(4, "samples per prompt (G)")
    ...     beta: float = setting(0.04, "weight of the KL penalty towards the base model", flag="--grpo-beta")
"""

from __future__ import annotations

from dataclasses import MISSING, field, fields


def setting(default=MISSING, help: str = "", *, flag: str | None = None, aliases: tuple[str, ...] = (),
            choices=None, factory=None, cli: bool = True, metavar: str | None = None):
    """A dataclass field documented for the command line.

    ``flag`` overrides the flag name (default ``--field-name``); ``aliases`` are further option
    strings (e.g. the reference launchers' names); ``choices`` limits the values; ``cli=False``
    keeps a field out of the command line (set from code only).
    """
    if not help:
        raise ValueError("every setting needs a help text")
    meta = {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": choices, "cli": cli, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def documented_fields(cls) -> list:
    """The fields of dataclass ``cls`` made with ``setting`` and shown on the command line."""
    return [f for f in fields(cls) if f.metadata.get("cli") and f.metadata.get("help")]
