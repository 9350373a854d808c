"""Memory files: round trip, atomicity, and clear errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import random_ids, random_memory, tiny_lm
from locas import MemoryFileError, load_memory, read_memory_info, save_memory


def test_round_trip_is_bit_exact(tmp_path):
    lm = tiny_lm("llama")
    mem = random_memory(lm, width=5, batch=2)
    path = save_memory(mem, tmp_path / "m.locas", model=lm, init="highest")
    back = load_memory(path, model=lm)
    assert torch.equal(back, mem)
    info = read_memory_info(path)
    assert info["width"] == 5 and info["model_type"] == "llama" and info["init"] == "highest"
    assert len(info["tau"]) == lm.num_layers and info["fingerprint"]
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_partial_layer_memory_loads_full_size_and_is_equivalent(tmp_path):
    lm = tiny_lm("llama")
    ids = random_ids(1, 10)
    part = random_memory(lm, width=3)[2:]
    save_memory(part, tmp_path / "p.locas", model=lm, layers=[2])
    full = load_memory(tmp_path / "p.locas", model=lm)
    assert full.shape[0] == lm.num_layers and torch.all(full[:2] == 0)
    with torch.no_grad():
        assert torch.allclose(lm(ids, memory=full).logits, lm(ids, memory=part, layers=[2]).logits)


def test_wrong_model_is_refused(tmp_path):
    lm = tiny_lm("llama")
    save_memory(random_memory(lm), tmp_path / "m.locas", model=lm)
    other_arch = tiny_lm("qwen2")
    with pytest.raises(MemoryFileError, match="was made for .*not this model"):
        load_memory(tmp_path / "m.locas", model=other_arch)
    same_shape_other_weights = tiny_lm("llama", seed=5)
    with pytest.raises(MemoryFileError, match="different weights"):
        load_memory(tmp_path / "m.locas", model=same_shape_other_weights)
    assert load_memory(tmp_path / "m.locas", model=same_shape_other_weights, strict=False).shape[0] == 3


def test_missing_truncated_and_foreign_files(tmp_path):
    lm = tiny_lm("llama")
    with pytest.raises(MemoryFileError, match="not found"):
        load_memory(tmp_path / "nope.locas", model=lm)
    path = save_memory(random_memory(lm), tmp_path / "m.locas", model=lm)
    data = path.read_bytes()
    (tmp_path / "cut.locas").write_bytes(data[: len(data) // 2])
    with pytest.raises(MemoryFileError, match="truncated or corrupt"):
        load_memory(tmp_path / "cut.locas", model=lm)
    (tmp_path / "junk.locas").write_bytes(b"\x00\x01 not a safetensors file at all")
    with pytest.raises(MemoryFileError, match="truncated or corrupt"):
        load_memory(tmp_path / "junk.locas")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(MemoryFileError, match="not a locas memory"):
        load_memory(tmp_path / "plain.safetensors")


def test_nan_memory_is_not_written_and_old_file_survives(tmp_path):
    lm = tiny_lm("llama")
    good = random_memory(lm)
    path = save_memory(good, tmp_path / "m.locas", model=lm)
    bad = good.clone()
    bad[0, 0, 0, 0, 2] = float("nan")
    with pytest.raises(MemoryFileError, match="NaN"):
        save_memory(bad, path, model=lm)
    assert torch.equal(load_memory(path, model=lm), good)


def test_metadata_is_json_not_pickle(tmp_path):
    lm = tiny_lm("llama")
    path = save_memory(random_memory(lm), tmp_path / "m.locas", model=lm)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8: 8 + header_len])
    assert json.loads(header["__metadata__"]["locas"])["format"] == "locas-memory"


def test_written_files_and_directories_get_the_users_umask(tmp_path):
    import os

    from locas.core.files import atomic_directory, atomic_write

    lm = tiny_lm("llama")
    old = os.umask(0o022)
    try:
        path = save_memory(random_memory(lm), tmp_path / "m.locas", model=lm)
        json_path = atomic_write(tmp_path / "r.json", lambda tmp: open(tmp, "w").write("{}"))
        out = atomic_directory(tmp_path / "fused", lambda tmp: (tmp / "config.json").write_text("{}"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and json_path.stat().st_mode & 0o777 == 0o644
    assert out.stat().st_mode & 0o777 == 0o755 and (out / "config.json").stat().st_mode & 0o777 == 0o644


def test_atomic_directory_refuses_clobbering_and_swaps_whole(tmp_path):
    from locas.core.files import atomic_directory
    from locas.errors import LocasError

    target = tmp_path / "fused"
    atomic_directory(target, lambda tmp: (tmp / "a").write_text("old"))
    with pytest.raises(LocasError, match="--overwrite"):
        atomic_directory(target, lambda tmp: (tmp / "b").write_text("new"))
    with pytest.raises(RuntimeError):  # a failed write leaves the old directory as it was, and no temporary one

        def broken(tmp):
            (tmp / "b").write_text("half")
            raise RuntimeError("boom")

        atomic_directory(target, broken, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["a"] and not list(tmp_path.glob(".*.tmp"))
    atomic_directory(target, lambda tmp: (tmp / "b").write_text("new"), overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["b"] and not list(tmp_path.glob(".*"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(LocasError, match="is a file"):
        atomic_directory(tmp_path / "file", lambda tmp: None)
