"""Fuzzing memory files: every damaged file is a one-line MemoryFileError or loads bit-identical, never wrong.

1,200 seeded mutations of a valid file (bit flips and byte changes in the header length, the
header, the metadata and the data; truncations; extensions; insertions and deletions; header
length lies). The checksum of format 2 covers the metadata and the tensor bytes, so a changed
byte anywhere that still parses is caught.
"""

from __future__ import annotations

import json
import random
import struct
import warnings

import pytest
import torch

from conftest import random_memory, tiny_lm
from locas.core.files import load_memory, read_memory_info, save_memory
from locas.errors import LocasWarning, MemoryFileError

CASES = 1200


def _mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One seeded mutation of ``data``; returns (kind, mutated bytes)."""
    n = len(data)
    header_len = struct.unpack("<Q", data[:8])[0]
    region = rng.choice(["length", "header", "data", "any"])
    lo, hi = {"length": (0, 8), "header": (8, 8 + header_len), "data": (8 + header_len, n), "any": (0, n)}[region]
    kind = rng.choice(["flip", "byte", "truncate", "extend", "insert", "delete", "length-lie", "swap"])
    b = bytearray(data)
    if kind == "flip":
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        i = rng.randrange(lo, hi)
        b[i] = (b[i] + rng.randrange(1, 256)) % 256
    elif kind == "truncate":
        b = b[:rng.randrange(0, n)]
    elif kind == "extend":
        b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    elif kind == "insert":
        i = rng.randrange(lo, hi)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
    elif kind == "delete":
        i = rng.randrange(lo, hi)
        del b[i:i + rng.randrange(1, 16)]
    elif kind == "length-lie":
        lie = rng.choice([0, 1, header_len - 1, header_len + 1, header_len + 8, n, 2 ** 32, 2 ** 63 - 1,
                          rng.randrange(2 ** 64)])
        b[:8] = struct.pack("<Q", lie % 2 ** 64)
    else:  # swap two bytes
        i, j = rng.randrange(lo, hi), rng.randrange(lo, hi)
        b[i], b[j] = b[j], b[i]
    return f"{kind}@{region}", bytes(b)


def test_fuzzed_memory_files_never_load_wrong(tmp_path):
    lm = tiny_lm("llama")
    memory = random_memory(lm, width=4)
    path = save_memory(memory, tmp_path / "m.locas", model=lm, init="highest")
    original, meta = path.read_bytes(), read_memory_info(path)
    rng = random.Random(0)
    outcome = {"error": 0, "identical": 0}
    target = tmp_path / "fuzz.locas"
    for case in range(CASES):
        kind, data = _mutate(original, rng)
        target.write_bytes(data)
        try:
            got = load_memory(target)
        except MemoryFileError as exc:
            assert "\n" not in str(exc) and str(exc), (case, kind)
            outcome["error"] += 1
            continue
        except BaseException as exc:  # a crash: must never happen
            pytest.fail(f"case {case} ({kind}): {type(exc).__name__}: {exc}")
        assert torch.equal(got, memory), f"case {case} ({kind}) loaded a different memory"
        assert read_memory_info(target) == meta, f"case {case} ({kind}) changed the metadata silently"
        outcome["identical"] += 1
    assert outcome["error"] + outcome["identical"] == CASES
    assert outcome["error"] > 0.9 * CASES, outcome  # nearly every mutation matters; those that do not are no-ops
    print(f"{CASES} mutations: {outcome['error']} one-line errors, {outcome['identical']} bit-identical loads, "
          "0 wrong loads, 0 crashes")


def test_checksum_catches_a_flipped_data_bit_and_old_files_load_with_a_note(tmp_path):
    lm = tiny_lm("llama")
    memory = random_memory(lm, width=4)
    path = save_memory(memory, tmp_path / "m.locas", model=lm)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # one bit of one float in the data region
    (tmp_path / "flip.locas").write_bytes(bytes(data))
    with pytest.raises(MemoryFileError, match="failed its checksum"):
        load_memory(tmp_path / "flip.locas", model=lm)
    # a file written by locas 0.1: format version 1, no checksum -> loads, with one note
    from safetensors.torch import save_file

    meta = read_memory_info(path)
    old = {k: v for k, v in meta.items() if k != "checksum"}
    old["version"] = 1
    save_file({"memory": memory}, str(tmp_path / "old.locas"), metadata={"locas": json.dumps(old)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(load_memory(tmp_path / "old.locas", model=lm).cpu(), memory)
    notes = [w for w in caught if issubclass(w.category, LocasWarning)]
    assert len(notes) == 1 and "no checksum" in str(notes[0].message)
    # a version-2 file whose checksum was removed is damaged, not old
    save_file({"memory": memory}, str(tmp_path / "stripped.locas"),
              metadata={"locas": json.dumps({k: v for k, v in meta.items() if k != "checksum"})})
    with pytest.raises(MemoryFileError, match="checksum is missing"):
        load_memory(tmp_path / "stripped.locas")
