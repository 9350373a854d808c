"""How this transformers version takes and returns a KV cache: the one place that knows the argument's name.

transformers 5.24 renamed the forward argument ``past_key_values`` to ``cache`` (the old name warns on every
call and goes in 5.40), and the output field with it. Everything that decodes with a cache passes it through
here, so the supported range spans both names.

    >>> out = model(input_ids=ids, use_cache=True, **cache_arg(cache))
    >>> cache = returned_cache(out)
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def cache_name() -> str:
    """``"cache"`` on transformers >= 5.24, ``"past_key_values"`` before."""
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def cache_arg(cache) -> dict:
    """The keyword argument that hands ``cache`` (a transformers ``Cache`` or None) to a model's forward."""
    return {cache_name(): cache}


def returned_cache(output):
    """The cache a forward with ``use_cache=True`` returned."""
    return getattr(output, cache_name())
