"""The server's heap release (serve/heap.py): freed memory goes back to the system, not only back to malloc."""

import subprocess
import sys
import textwrap

import pytest

from locas.serve.heap import _malloc_trim, release_free_memory

HOLES = textwrap.dedent("""
    from locas.serve.heap import release_free_memory

    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    blocks = [bytes([k % 251]) * 65536 for k in range(4096)]  # 256 MiB of 64 KiB blocks, written (resident)
    del blocks[::2]  # every other one freed: 128 MiB of holes that free() cannot hand back (not the heap's top)
    before = rss_mib()
    released = release_free_memory()
    print(released, before, rss_mib(), len(blocks))
""")


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_freed_holes_in_the_heap_go_back_to_the_system():
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, check=True).stdout.split()
    released, before, after = out[0] == "True", float(out[1]), float(out[2])
    assert released
    assert before - after > 64, f"resident {before:.0f} -> {after:.0f} MiB: the 128 MiB of holes stayed resident"


def test_release_is_safe_to_call_anywhere():
    assert release_free_memory() is (_malloc_trim() is not None)
