"""Every command path reproduces its recorded golden numbers bit for bit (tests/golden/, see golden_cases.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from golden_cases import GOLDEN, cases, run_case


def _diff(a, b, path="") -> list[str]:
    """Where two JSON values differ (exactly), as readable paths."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: missing on one side" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b)):
            out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    if a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):  # NaN == NaN here
        return [f"{path}: {a!r} != {b!r}"]
    return []


@pytest.mark.parametrize("name", sorted(cases()))
def test_golden(name, tmp_path):
    before = torch.get_num_threads()
    try:
        data, tensors = run_case(name, tmp_path)
    finally:
        torch.set_num_threads(before)
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    diffs = _diff(data, expected)
    assert not diffs, f"{len(diffs)} differences, first: " + "; ".join(diffs[:5])
    stored = GOLDEN / f"{name}.safetensors"
    want = load_file(str(stored)) if stored.is_file() else {}
    assert set(tensors) == set(want)
    for key, value in want.items():
        got = tensors[key]
        assert got.shape == value.shape and torch.equal(got, value), \
            f"{key}: max |diff| {(got.float() - value.float()).abs().max():.3e}"
