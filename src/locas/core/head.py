"""Next-token NLL through the output head in row chunks, never holding a (T, V) logits tensor or its gradient.

The vocabulary is the widest matrix of a small model (SmolLM2: 49,152 x 576). Scoring a 1,024-token
window the plain way makes a 200 MB logits tensor, its log-softmax, and on a training step the same
again for the gradient, the zero-filled gradient of the slice ``logits[:, :-1]`` and the softmax's
backward: about 40 % of a Locas step here (docs/PERFORMANCE.md). ``next_token_nll`` runs the model's
decoder, then the head a few hundred rows at a time; each chunk's NLL needs only its logsumexp, and
when the hidden states need a gradient the chunk also writes ``dNLL_t / dh_t = (softmax_t - onehot_t) W``
right away ((T, d): small), which the backward scales by the incoming gradient. That is exact, because
token t's NLL depends on h_t alone.

Used where the logits are exactly ``h W^T (+ b)`` (``plain_head``); a head with soft-capping or a logit
scale, or one being trained, takes the plain path.

    >>> nll = next_token_nll(lm.model, ids)      # (B, T-1) float32, equal to token_nll(lm.model(ids).logits, ids)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_ROWS = 256  # rows of logits per chunk: 256 x 49,152 floats = 48 MB on SmolLM2
CHUNKED = True  # False: every head takes the plain path (benchmarks/costs.py measures both in one process)
_SCALES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scaling")


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """NLL of each next token: logits (B, T, V), ids (B, T) -> (B, T-1) float32 (row by row over the vocabulary)."""
    B, T, V = logits.shape
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, V), input_ids[:, 1:].reshape(-1),
                           reduction="none").view(B, T - 1)


def plain_head(model) -> nn.Linear | None:
    """The model's output head when its logits are exactly ``last_hidden_state @ W^T (+ b)`` and it is frozen,
    else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear or head.weight.requires_grad or (head.bias is not None and head.bias.requires_grad):
        return None
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for name in _SCALES:
        value = getattr(config, name, None)
        if value is not None and value != 1:
            return None
    return head


class _HeadNLL(torch.autograd.Function):
    """NLL (N,) of ``targets`` under ``hidden @ weight^T + bias``, chunk by chunk; the gradient with respect to
    ``hidden`` is written in the forward pass (per row, it is the NLL's own gradient) and scaled in the backward."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor, rows: int):
        N = hidden.shape[0]  # hidden (N, d), weight (V, d), targets (N,)
        want_grad = ctx.needs_input_grad[0]
        nll = torch.empty(N, dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if want_grad else None
        for lo in range(0, N, rows):
            hi = min(lo + rows, N)
            logits = F.linear(hidden[lo:hi], weight, bias).float()  # (n, V)
            target = targets[lo:hi, None]  # (n, 1)
            picked = logits.gather(1, target)[:, 0]  # (n,)
            top = logits.amax(-1, keepdim=True)  # (n, 1)
            total = logits.sub_(top).exp_().sum(-1, keepdim=True)  # logits now hold exp(logit - top)
            nll[lo:hi] = (total.log() + top)[:, 0] - picked
            if want_grad:
                probs = logits.div_(total)  # softmax, in place
                probs.scatter_add_(1, target, torch.full_like(target, -1, dtype=probs.dtype))
                grad[lo:hi] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)  # (n, d)
        ctx.save_for_backward(grad)
        return nll

    @staticmethod
    def backward(ctx, upstream: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * upstream[:, None].to(grad.dtype), None, None, None, None


def next_token_nll(model, input_ids: torch.Tensor, rows: int = HEAD_ROWS, **inputs) -> torch.Tensor:
    """NLL of each next token under ``model`` (a transformers causal LM, or a peft model around one):
    ids (B, T) -> (B, T-1) float32; ``inputs``: attention_mask, position_ids. Differentiable."""
    if hasattr(model, "get_base_model"):  # peft: its adapters live inside the wrapped model's layers
        model = model.get_base_model()
    head = plain_head(model) if CHUNKED else None
    if head is None:
        return token_nll(model(input_ids=input_ids, use_cache=False, **inputs).logits, input_ids)
    hidden = model.base_model(input_ids=input_ids, use_cache=False, **inputs).last_hidden_state  # (B, T, d)
    B, T, d = hidden.shape
    flat = hidden[:, :-1].reshape(-1, d)  # (B*(T-1), d)
    nll = _HeadNLL.apply(flat, head.weight, head.bias, input_ids[:, 1:].reshape(-1), rows)
    return nll.view(B, T - 1)
