"""NL-SVD: compress a Locas-MLP memory to ``n`` slots (PAPER.md 3.2), always in float32.

For one layer's memory ``f(x) = sum_s act(<k_s, x>) v_s`` with ``r`` slots:

1. importance ``s_i = |k_i| * |v_i|``; scaled keys ``kbar_i = s_i * k_i / |k_i|``;
2. eigendecompose ``Kbar Kbar^T`` (d x d; the equivalent r x r Gram matrix when r < d);
3. the top-``n`` eigenvectors become unit probe keys ``u_j`` (directions whose singular value is
   below ``tol`` times the largest are dropped); each is signed so the scaled keys project
   positively on it (an eigenvector's sign is arbitrary, ReLU's is not);
4. each new value is the *old* memory read on its probe: ``c_j = f(u_j) / act(1)``.

Because the probes are orthonormal and ``act(0) = 0``, the new memory reproduces the old one
exactly on every probe key (and on positive multiples of it); with a linear activation it is
exact on the whole span of the probes (a truncated, importance-weighted SVD of ``V^T K^T``).

    >>> keys, values = nlsvd(k, v, n=256)                          # (m, d), (m, d), m <= 256
    >>> mem = compress_memory(mem, n=256, act=torch.relu, used=512)  # (L, B, cap, d, 2), slots >= 256 zero
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import LocasError


def _act_one(act) -> float:
    one = float(act(torch.ones(1))[0])
    if not one > 0:
        raise LocasError("NL-SVD needs an activation with act(1) > 0 (ReLU, GELU, ...)")
    return one


@torch.no_grad()
def nlsvd(keys: torch.Tensor, values: torch.Tensor, n: int, act=torch.relu, tol: float = 1e-6):
    """Compress slots ``keys``/``values`` (r, d) to at most ``n`` probe slots: returns (m, d), (m, d) float32."""
    if n < 1:
        raise LocasError(f"NL-SVD target size must be at least 1, got {n}")
    K = keys.detach().float()  # (r, d)
    V = values.detach().float()  # (r, d)
    r, d = K.shape
    scale = K.norm(dim=-1) * V.norm(dim=-1)  # (r,) importance s_i
    Kbar = F.normalize(K, dim=-1) * scale[:, None]  # (r, d)
    if r < d:  # same eigenvectors through the small Gram matrix: Kbar^T w / sigma
        evals, W = torch.linalg.eigh(Kbar @ Kbar.T)  # (r,), (r, r) ascending
        evals, W = evals.flip(0)[:n], W.flip(1)[:, :n]
        sigma = evals.clamp(min=0).sqrt()
        keep = sigma > tol * sigma.max().clamp(min=1e-30)
        U = (Kbar.T @ W[:, keep]) / sigma[keep]  # (d, m)
        U = torch.linalg.qr(U).Q if U.shape[1] else U  # re-orthonormalise (float32 rounding)
    else:
        evals, E = torch.linalg.eigh(Kbar.T @ Kbar)  # (d,), (d, d): the paper's Kbar Kbar^T, keys as columns
        evals, E = evals.flip(0)[:n], E.flip(1)[:, :n]
        sigma = evals.clamp(min=0).sqrt()
        keep = sigma > tol * sigma.max().clamp(min=1e-30)
        U = E[:, keep]  # (d, m)
    U = U.T.contiguous()  # (m, d) unit probe keys
    sign = torch.sign((Kbar @ U.T).sum(dim=0))  # (m,)
    U = U * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]
    C = act(U @ K.T) @ V / _act_one(act)  # (m, d): the old memory read on each probe
    return U, C


@torch.no_grad()
def compress_memory(memory: torch.Tensor, n: int, act=torch.relu, used: int | None = None,
                    tol: float = 1e-6) -> torch.Tensor:
    """NL-SVD every layer and row of ``memory`` (L, B, cap, d, 2) down to ``n`` slots.

    Returns a float32 tensor of the same shape whose slots ``n ..`` are zero (unused).
    ``used`` limits the input to the first ``used`` slots (free slots are zero anyway).
    """
    if memory.dim() != 5 or memory.shape[-1] != 2:
        raise LocasError(f"NL-SVD compresses Locas-MLP memories (L, B, r, d, 2); got {tuple(memory.shape)}")
    cap = memory.shape[2]
    if not 1 <= n <= cap:
        raise LocasError(f"NL-SVD target {n} must be between 1 and the memory width {cap}")
    mem = memory.detach().float()
    used = cap if used is None else int(used)
    out = torch.zeros_like(mem)
    for i in range(mem.shape[0]):
        for b in range(mem.shape[1]):
            k, v = mem[i, b, :used, :, 0], mem[i, b, :used, :, 1]
            U, C = nlsvd(k, v, n, act=act, tol=tol)
            out[i, b, :U.shape[0], :, 0] = U
            out[i, b, :U.shape[0], :, 1] = C
    return out


def memory_function(keys: torch.Tensor, values: torch.Tensor, x: torch.Tensor, act=torch.relu) -> torch.Tensor:
    """``sum_s act(<k_s, x>) v_s`` for inputs ``x`` (N, d): (N, d) float32 (used by tests and docs)."""
    return act(x.float() @ keys.float().T) @ values.float()
