"""KV caches of transformers models: the one place that knows how a forward takes one and how to make one.

transformers 5.24 renamed the forward argument ``past_key_values`` to ``cache`` (the old name warns on every
call and goes in 5.40), and the output field with it. Everything that decodes with a cache passes it through
here, so the supported range spans both names.

    >>> out = model(input_ids=ids, use_cache=True, **cache_arg(new_cache(model)))
    >>> cache = returned_cache(out)
    >>> has_sliding_window(model)     # Gemma 2/3, Mistral: some layers keep only their last window of keys
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


def new_cache(model):
    """An empty transformers DynamicCache laid out for ``model`` (sliding-window layers where it has them)."""
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def has_sliding_window(model) -> bool:
    """Whether some of ``model``'s layers attend through a sliding window. Batching such a model with left
    padding would spend a padded row's window slots on padding, so callers decode or score it one row at a time."""
    return any(new_cache(model).is_sliding)
