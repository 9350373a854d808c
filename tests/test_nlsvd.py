"""NL-SVD compression of Locas-MLP memories (PAPER.md 3.2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import random_ids, tiny_lm
from locas.errors import LocasError
from locas.learn.nlsvd import compress_memory, memory_function, nlsvd
from locas.learn.write import append_slots, step_write


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _slots(r, d, seed=0, value_scale=0.3):
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(r, d, generator=g), dim=-1)
    values = torch.randn(r, d, generator=g) * value_scale
    return keys, values


@pytest.mark.parametrize("r,d", [(40, 16), (10, 32)])  # d x d and r x r eigen routes
def test_outputs_identical_on_probe_keys_and_width_drops_to_n(r, d):
    keys, values = _slots(r, d)
    U, C = nlsvd(keys, values, n=6)
    assert U.shape == C.shape == (6, d)
    assert torch.allclose(U @ U.T, torch.eye(6), atol=1e-5)  # unit, orthogonal probes
    old = memory_function(keys, values, U)
    assert (memory_function(U, C, U) - old).abs().max() <= 1e-5
    # positive multiples of a probe too (ReLU is positively homogeneous)
    assert (memory_function(U, C, 2.5 * U) - memory_function(keys, values, 2.5 * U)).abs().max() <= 1e-5
    assert old.abs().max() > 0.1  # the probes actually read something


def test_linear_memory_is_exact_on_the_whole_probe_span():
    keys, values = _slots(30, 16, seed=1)
    ident = lambda x: x  # noqa: E731
    U, C = nlsvd(keys, values, n=5, act=ident)
    x = torch.randn(7, 5) @ U  # arbitrary points of the span
    assert (memory_function(U, C, x, ident) - memory_function(keys, values, x, ident)).abs().max() <= 1e-5
    # and it is the importance-weighted truncated SVD: probes span the top right-singular space of Kbar
    kbar = keys * (keys.norm(dim=-1) * values.norm(dim=-1))[:, None]
    top = torch.linalg.svd(kbar, full_matrices=False).Vh[:5]  # (5, d)
    assert torch.allclose(top.T @ top, U.T @ U, atol=1e-4)


def test_probes_follow_importance_and_tiny_directions_are_dropped():
    d = 16
    basis = torch.eye(d)
    keys = torch.cat([basis[:3], basis[:3]])  # rank 3
    values = torch.cat([torch.full((3, d), 0.1), torch.zeros(3, d)])  # second copy has zero importance
    U, C = nlsvd(keys, values, n=8)
    assert U.shape[0] == 3  # only 3 non-zero directions exist
    assert torch.allclose(U.abs() @ torch.ones(d), torch.ones(3))
    # signs are fixed so that the scaled keys project positively (ReLU reads them)
    assert torch.all((keys[:3] @ U.T).sum(0) > 0)
    # a slot with zero value has zero importance: adding it changes nothing
    U2, C2 = nlsvd(keys[:3], values[:3], n=8)
    assert torch.allclose(U, U2, atol=1e-6) and torch.allclose(C, C2, atol=1e-6)


def test_compress_real_memory_in_float32():
    torch.manual_seed(0)
    lm = tiny_lm("gpt2", dtype=torch.bfloat16)
    mem = torch.zeros(lm.num_layers, 1, 24, lm.hidden_size, 2)
    used = append_slots(mem, 0, step_write(lm, random_ids(1, 20), eps=1.0))  # 19 slots
    act = lm.wrappers[0].act
    out = compress_memory(mem.to(torch.bfloat16), n=8, act=act, used=used)
    assert out.dtype == torch.float32 and out.shape == mem.shape
    assert torch.all(out[:, :, 8:] == 0)
    assert torch.all(out[:, :, :8, :, 0].norm(dim=-1) > 0.99)
    for i in range(lm.num_layers):
        k, v = mem[i, 0, :used, :, 0], mem[i, 0, :used, :, 1]
        U = out[i, 0, :8, :, 0]
        ref = memory_function(k.bfloat16().float(), v.bfloat16().float(), U, act)
        assert (memory_function(U, out[i, 0, :8, :, 1], U, act) - ref).abs().max() <= 1e-5


def test_backbone_activation_keeps_probe_outputs():
    keys, values = _slots(25, 16, seed=3)
    gelu = torch.nn.GELU()
    U, C = nlsvd(keys, values, n=4, act=gelu)
    # GELU(0) = 0, so only the probe itself fires; act(1) is divided out
    assert (memory_function(U, C, U, gelu) - memory_function(keys, values, U, gelu)).abs().max() <= 1e-5


def test_bad_inputs_are_clear_errors():
    with pytest.raises(LocasError, match="at least 1"):
        nlsvd(*_slots(4, 8), n=0)
    with pytest.raises(LocasError, match="Locas-MLP"):
        compress_memory(torch.zeros(2, 1, 4, 8, 3), n=2)
    with pytest.raises(LocasError, match="between 1 and"):
        compress_memory(torch.zeros(2, 1, 4, 8, 2), n=9)
