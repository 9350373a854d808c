"""Every command path reproduces its recorded golden numbers (tests/golden/, see golden_cases.py).

Portable across CPUs, and still a guard that catches a real change (docs/TESTING.md has the measurements):

* **Discrete outputs are pinned, not loosened.** Greedy strings and argmax ids of tiny random models flip when
  two logits tie to the last bit, and which way a tie falls depends on the CPU's kernels (AVX2 and AVX-512 sum
  in different orders). So the cases run in one child process with the kernels pinned to the code path that
  every x86-64 CPU has (``golden_cases.PINNED_KERNELS``: ATen's baseline kernels, MKL's reproducible branch,
  oneDNN at SSE4.1), and the goldens were recorded that way. Strings, ints and booleans are then compared
  exactly, on every machine.
* **Floats get a measured tolerance** for what the pin cannot reach (libm, thread pools). Scalars:
  ``|got - want| <= ATOL + RTOL * |want|``; a value stored rounded to 4-6 decimals may also differ by one unit
  of its last decimal; tensors: ``max |got - want| <= TENSOR_RTOL * max |want|``. Pinned, the goldens
  reproduce bit for bit here, also with MKL held to AVX2 or SSE4.2 (as on older CPUs). Unpinned, across ATen's
  ``default``/``avx2``/``avx512`` kernels (``golden_cases.py spread``), the largest spread used 0.36 of the
  scalar tolerance (4.2e-5 relative on a KL of letter probabilities, 3e-5 on a log-prob of -6.4) and 0.30 of
  the tensor one (1.5e-4 of a memory's scale): about 3x margin. A change of 1e-4 relative in an NLL, the
  size of the smallest change the goldens caught in the restructure (the teacher fix), is 4-5x the tolerance:
  ``test_the_tolerance_still_catches_a_small_change`` keeps that promise.
* ``LOCAS_GOLDEN_ISA=avx2`` (or ``avx512``, ``default``) runs the cases on that ATen kernel set with MKL and
  oneDNN unpinned instead: ``make test-isa`` runs the golden suite that way under two kernel sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from golden_cases import GOLDEN, cases, kernel_env

ATOL, RTOL = 3e-5, 2e-5
TENSOR_RTOL = 5e-4
ROUNDED_DECIMALS = range(4, 7)  # values a report rounds (e.g. top-k logits to 4 decimals, log-probs to 6)


def _decimals(x: float) -> int | None:
    text = repr(float(x))
    return len(text.split(".")[1]) if "." in text and "e" not in text else None


def _close(got: float, want: float) -> bool:
    if got == want or got != got and want != want:  # NaN == NaN here
        return True
    allowed = ATOL + RTOL * abs(want)
    places = [_decimals(got), _decimals(want)]
    if None not in places and max(places) in ROUNDED_DECIMALS:  # one unit of the last decimal a report kept
        allowed = max(allowed, 1.000001 * 10.0 ** -max(places))
    return abs(got - want) <= allowed


def _diff(a, b, path="") -> list[str]:
    """Where ``a`` (got) and ``b`` (wanted) differ, as readable paths: floats beyond the tolerance, anything
    else (strings, ints, booleans, keys, lengths) at all."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: missing on one side" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b)):
            out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        return [] if numbers and _close(float(a), float(b)) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def _tensor_diffs(got: dict, want: dict) -> list[str]:
    if set(got) != set(want):
        return [f"tensors {sorted(got)} != {sorted(want)}"]
    out = []
    for key, value in want.items():
        g = got[key]
        if g.shape != value.shape or g.dtype != value.dtype:
            out.append(f"{key}: {tuple(g.shape)} {g.dtype} != {tuple(value.shape)} {value.dtype}")
            continue
        gap, scale = (g.double() - value.double()).abs().max().item(), value.double().abs().max().item()
        if not gap <= TENSOR_RTOL * scale:
            out.append(f"{key}: max |diff| {gap:.3e} > {TENSOR_RTOL} x max |value| {scale:.3e}")
    return out


@pytest.fixture(scope="session")
def golden_runs(request, tmp_path_factory) -> Path:
    """Every selected case, run once in a child process on the pinned kernels (or ``LOCAS_GOLDEN_ISA``'s)."""
    names = sorted({item.callspec.params["name"] for item in request.session.items
                    if item.originalname == "test_golden"})
    out = tmp_path_factory.mktemp("golden-runs")
    env = kernel_env(os.environ.get("LOCAS_GOLDEN_ISA", "pinned"))
    with open(out / "log.txt", "w") as log:
        subprocess.run([sys.executable, str(Path(__file__).with_name("golden_cases.py")), "dump", str(out), *names],
                       env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    return out


@pytest.mark.parametrize("name", sorted(cases()))
def test_golden(name, golden_runs):
    run = golden_runs / f"{name}.json"
    if not run.is_file():
        error = golden_runs / f"{name}.error"
        log = golden_runs / "log.txt"
        pytest.fail(error.read_text() if error.is_file() else f"no result; the run's log:\n{log.read_text()[-4000:]}")
    diffs = _diff(json.loads(run.read_text()), json.loads((GOLDEN / f"{name}.json").read_text()))
    assert not diffs, f"{len(diffs)} differences, first: " + "; ".join(diffs[:5])
    stored, made = GOLDEN / f"{name}.safetensors", golden_runs / f"{name}.safetensors"
    want = load_file(str(stored)) if stored.is_file() else {}
    got = load_file(str(made)) if made.is_file() else {}
    diffs = _tensor_diffs(got, want)
    assert not diffs, "; ".join(diffs)


def test_the_tolerance_still_catches_a_small_change():
    """The comparison lets kernel noise through and nothing the size of a real change (the teacher fix: ~1e-4)."""
    record = json.loads((GOLDEN / "pg19_methods.json").read_text())
    nll = record["locas"][0]
    noisy = {**record, "locas": [[x * (1 + 2e-6) for x in nll]]}  # 10x the typical cross-ISA spread of an NLL
    assert _diff(noisy, record) == []
    for change in (1e-4, -1e-4):
        moved = {**record, "locas": [[nll[0], nll[1] * (1 + change), *nll[2:]]]}
        assert _diff(moved, record) == [f".locas[0][1]: {nll[1] * (1 + change)!r} != {nll[1]!r}"]
    assert _diff({"a": 0.1047}, {"a": 0.1046}) == []  # rounded to 4 decimals: one unit of the last one
    assert _diff({"a": 0.1048}, {"a": 0.1046}) != []
    assert _diff({"a": 0.5}, {"a": 0.6}) != [] and _diff({"a": 1}, {"a": True}) != []
    assert _diff({"answer": "R0_"}, {"answer": "R42"}) != []
    memory = load_file(str(GOLDEN / "memorize_ntp.safetensors"))["memory"]
    scale = memory.abs().max()
    assert _tensor_diffs({"memory": memory + 1e-4 * scale}, {"memory": memory}) == []
    assert _tensor_diffs({"memory": memory + 1e-3 * scale * torch.sign(memory)}, {"memory": memory}) != []
