"""Freed heap memory back to the operating system, so that a long-lived server's resident memory stays flat.

glibc's ``malloc`` keeps what the process frees in its arenas for reuse: a memorisation job's training (its
activations and gradients, about 700 MB on SmolLM2-135M) leaves that much resident after it ends, and every
next job's peak lands a little higher on the fragments. ``malloc_trim(0)`` hands every free page of every arena
back; the server's job worker calls it after each job. Elsewhere (musl, macOS) it does nothing.

    >>> release_free_memory()          # True where glibc released (or had nothing to release)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where the C library cannot (not glibc)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
