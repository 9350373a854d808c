"""Memory files: safetensors plus JSON metadata, written atomically, validated on load.

A ``.locas`` file holds one tensor ``memory`` (L, B, r, d, C) in float32 and a metadata entry
``locas`` (JSON) with the format version, base model name, ``model_type``, layer count, hidden
size, width, init, per-layer tau and a fingerprint of the base weights. Never pickled.

    >>> save_memory(mem, "book.locas", model=lm, init="highest")
    >>> mem = load_memory("book.locas", model=lm)     # clear error if made for another model
    >>> info = read_memory_info("book.locas")         # metadata only
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import MemoryFileError

FORMAT = "locas-memory"
VERSION = 1


def model_fingerprint(lm) -> str:
    """A short hash of a sample of the base MLP weights (stable across fp32/bf16 copies)."""
    h = hashlib.sha256()
    picks = sorted({0, lm.num_layers // 2, lm.num_layers - 1})
    for i in picks:
        w = lm.spec.down_weight(lm.wrappers[i].base_mlp).detach()
        sample = w.flatten()[:4096].to("cpu", torch.float32).to(torch.bfloat16).view(torch.int16)
        h.update(str(tuple(w.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def atomic_write(path: Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename over ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_memory(memory: torch.Tensor, path, model=None, *, layers=None, init: str | None = None,
                extra: dict | None = None) -> Path:
    """Write ``memory`` (L, B, r, d, C) to ``path`` atomically; refuses non-finite memories."""
    memory = memory.detach().to("cpu", torch.float32).contiguous()
    if memory.dim() != 5:
        raise MemoryFileError(f"a memory must be 5-D (layers, batch, width, hidden, C); got {tuple(memory.shape)}")
    if not torch.isfinite(memory).all():
        raise MemoryFileError(f"memory contains NaN or inf values; not writing '{path}' (lower the learning rate)")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "num_layers": memory.shape[0],
        "batch": memory.shape[1],
        "width": memory.shape[2],
        "hidden_size": memory.shape[3],
        "channels": memory.shape[4],
        "layers": list(range(memory.shape[0])) if layers is None else [int(i) for i in layers],
        "init": init,
        **(extra or {}),
    }
    if model is not None:
        meta.update(base_model=str(model.name), model_type=model.config.model_type,
                    model_layers=model.num_layers, kind=model.memory_kind,
                    tau=model.taus(memory.shape[2]), fingerprint=model_fingerprint(model),
                    mlp_activation=model.mlp_activation)
    return atomic_write(Path(path), lambda tmp: save_file({"memory": memory}, tmp,
                                                          metadata={"locas": json.dumps(meta)}))


def read_memory_info(path) -> dict:
    """The JSON metadata of a memory file, validating that it is one."""
    path = Path(path)
    if not path.is_file():
        raise MemoryFileError(f"memory file '{path}' not found; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("locas")
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise MemoryFileError(f"'{path}' is not a readable memory file (truncated or corrupt: {exc}); "
                              "re-create it with `locas memorize`") from None
    if raw is None:
        raise MemoryFileError(f"'{path}' is a safetensors file but not a locas memory (no 'locas' metadata)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise MemoryFileError(f"'{path}' has unsupported format {meta.get('format')} v{meta.get('version')}; "
                              "upgrade locas")
    return meta


def load_memory(path, model=None, *, device=None, strict: bool = True) -> torch.Tensor:
    """Read a memory file; with ``model``, check it was made for that model (``strict`` = fingerprint too).

    A Locas-MLP file also switches ``model`` to the memory activation it was trained with.
    """
    meta = read_memory_info(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            memory = f.get_tensor("memory")
    except Exception as exc:
        raise MemoryFileError(f"'{path}' is truncated or corrupt ({exc}); re-create it with `locas memorize`") from None
    if tuple(memory.shape) != tuple(meta[k] for k in ("num_layers", "batch", "width", "hidden_size", "channels")):
        raise MemoryFileError(f"'{path}' is inconsistent: tensor {tuple(memory.shape)} vs its metadata; re-create it")
    if model is not None:
        mine = (model.config.model_type, model.num_layers, model.hidden_size)
        theirs = (meta.get("model_type"), meta.get("model_layers", meta["num_layers"]), meta["hidden_size"])
        if mine != theirs:
            raise MemoryFileError(
                f"'{path}' was made for {meta.get('base_model')} ({theirs[0]}, {theirs[1]} layers, "
                f"hidden {theirs[2]}), not this model ({mine[0]}, {mine[1]} layers, hidden {mine[2]}); "
                "load it with the model it was made for")
        if strict and meta.get("fingerprint") and meta["fingerprint"] != model_fingerprint(model):
            raise MemoryFileError(
                f"'{path}' was made for different weights ({meta.get('base_model')}); use that model, "
                "or pass strict=False (--no-strict) to load anyway")
        if meta.get("mlp_activation") and meta["mlp_activation"] != model.mlp_activation:
            model.set_mlp_activation(meta["mlp_activation"])  # the units must fire as they did in training
        memory = _expand_layers(memory, meta["layers"], model.num_layers)
        memory = memory.to(device or model.device)
    elif device is not None:
        memory = memory.to(device)
    return memory


def _expand_layers(memory: torch.Tensor, layers: list[int], num_layers: int) -> torch.Tensor:
    """Memories covering a subset of layers are returned full-size, zeros elsewhere (exact)."""
    if memory.shape[0] == num_layers and layers == list(range(num_layers)):
        return memory
    full = torch.zeros((num_layers,) + tuple(memory.shape[1:]), dtype=memory.dtype)
    full[layers] = memory
    return full
