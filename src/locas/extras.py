"""The optional parts of locas and the packages behind them: the one place that knows which extra provides what.

``pip install locas`` is the library and the memory commands (memorize, ask, chat, fuse, export, stack, info);
``locas[serve]`` adds the HTTP server, ``locas[eval]`` the harnesses (PG-19, LoCoMo, MMLU/retention, their plots,
the TempLoRA baseline, GRPO's answer normaliser). A missing one is a one-line error that names the install command.

    >>> require_extra("serve", "locas serve")      # MissingExtra: ... pip install 'locas[serve]'
    >>> require("peft", "the TempLoRA baseline")   # the same for one module of an extra
"""

from __future__ import annotations

from importlib.util import find_spec

from .errors import LocasError

# extra -> {import name: distribution name}
EXTRAS = {
    "serve": {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart": "python-multipart"},
    "eval": {"matplotlib": "matplotlib", "nltk": "nltk", "peft": "peft", "lm_eval": "lm-eval"},
}
_EXTRA_OF = {module: extra for extra, modules in EXTRAS.items() for module in modules}


class MissingExtra(LocasError):
    """An optional part of locas is used without the packages it needs."""


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed package counts as missing
        return False


def _refuse(what: str, extra: str, missing: list[str]) -> MissingExtra:
    names = ", ".join(EXTRAS[extra][m] for m in missing)
    verb = "is" if len(missing) == 1 else "are"
    return MissingExtra(f"{what} needs the {extra} extra ({names} {verb} not installed): "
                        f"pip install 'locas[{extra}]'")


def require_extra(extra: str, what: str) -> None:
    """Raise ``MissingExtra`` unless every package of ``extra`` can be imported."""
    missing = [m for m in EXTRAS[extra] if not _installed(m)]
    if missing:
        raise _refuse(what, extra, missing)


def require(module: str, what: str) -> None:
    """Raise ``MissingExtra`` unless ``module`` (a package of one of the extras) can be imported."""
    if not _installed(module):
        raise _refuse(what, _EXTRA_OF[module], [module])
