"""Memory files and atomic writes: safetensors plus JSON metadata and a checksum, validated on load.

A ``.locas`` file holds one tensor ``memory`` (L, B, r, d, C) in float32 and a metadata entry
``locas`` (JSON) with the format version, base model name, ``model_type``, layer count, hidden
size, width, init, per-layer tau, a fingerprint of the base weights and (format 2) a sha256
``checksum`` of the metadata and the tensor bytes, checked on every load: a changed byte anywhere
is a one-line ``MemoryFileError``, never a silently different memory. Never pickled. An attention-path
memory (``memory_on: "attn"`` or ``"both"``) is format 3, which a reader of format 2 refuses in one line
("upgrade locas"); FFN memories are still written as format 2.

Every file locas writes goes through ``atomic_write`` (a temporary sibling, fsync, rename: readers
see the old file or the new one, never a partial one; the user's umask applies), every artefact
directory (a fused checkpoint) through ``atomic_directory``.

    >>> save_memory(mem, "book.locas", model=lm, init="highest")
    >>> mem = load_memory("book.locas", model=lm)     # clear error if made for another model or damaged
    >>> info = read_memory_info("book.locas")         # metadata only
    >>> atomic_directory("fused/", lambda tmp: dense.save_pretrained(tmp), overwrite=False)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import LocasError, LocasWarning, MemoryFileError
from .model import SITES

FORMAT = "locas-memory"
VERSION = 3  # 2: the metadata carries a sha256 checksum of itself and the tensor bytes; 3: memory_on attn|both
FFN_VERSION = 2  # what an FFN memory is still written as, so that locas 0.2 readers keep reading it
SHAPE_KEYS = ("num_layers", "batch", "width", "hidden_size", "channels")


def model_fingerprint(lm) -> str:
    """A short hash of a sample of the base MLP weights (stable across fp32/bf16 copies)."""
    h = hashlib.sha256()
    picks = sorted({0, lm.depth // 2, lm.depth - 1})
    for i in picks:
        w = lm.spec.down_weight(lm.ffn_wrappers[i].base_mlp).detach()
        sample = w.flatten()[:4096].to("cpu", torch.float32).to(torch.bfloat16).view(torch.int16)
        h.update(str(tuple(w.shape)).encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


# ---- atomic writes -------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then rename over ``path``: readers never see a partial file.

    The file gets the user's umask (not the temporary file's 0600); on any failure or interrupt the
    temporary file is removed and ``path`` keeps what it held before.
    """
    path = Path(path)
    if path.is_dir():
        raise LocasError(f"'{path}' is a directory; give a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_write_failure(exc):
            raise _write_error(path, exc) from None
        raise
    return path


def _is_write_failure(exc: BaseException) -> bool:
    """A failure of the write itself (disk full, permissions, a library's I/O error), not a bug or an interrupt."""
    return isinstance(exc, OSError) or (isinstance(exc, Exception) and not isinstance(exc, LocasError)
                                        and "error" in type(exc).__name__.lower() and "write" in str(exc).lower())


def _write_error(path: Path, exc: BaseException) -> LocasError:
    import errno

    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "no space" in str(exc).lower():
        return LocasError(f"cannot write '{path}': no space left on device; free some space or choose another "
                          "output (nothing was written)")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:120]
    return LocasError(f"cannot write '{path}': {reason}; choose another output (nothing was written)")


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where it is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def atomic_directory(path, write_fn, overwrite: bool = False) -> Path:
    """Call ``write_fn(tmp_dir)`` in a temporary sibling directory, then put it at ``path`` in one rename.

    An existing ``path`` is replaced only with ``overwrite`` (swapped in atomically where the system
    can, so a kill leaves the old directory or the new one); a regular file there is refused. On any
    failure the temporary directory is removed.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LocasError(f"'{path}' is a file, not a directory; give a directory path to write")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LocasError(f"'{path}' already exists and is not empty; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        write_fn(tmp)
        mode = 0o777 & ~_umask()
        os.chmod(tmp, mode)
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            elif f.is_dir():
                os.chmod(f, mode)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(str(tmp), str(path)):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        else:  # no atomic swap here: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.rename(path, old / path.name)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(path.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_failure(exc):
            raise _write_error(path, exc) from None
        raise
    return path


# ---- memory files --------------------------------------------------------------------------------
def _checksum(memory: torch.Tensor, meta: dict) -> str:
    """sha256 of the metadata (without its checksum, keys sorted) and the float32 tensor bytes."""
    h = hashlib.sha256(b"locas-memory\0")
    h.update(json.dumps({k: v for k, v in meta.items() if k != "checksum"}, sort_keys=True).encode())
    h.update(memory.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_memory(memory: torch.Tensor, path, model=None, *, layers=None, init: str | None = None,
                extra: dict | None = None) -> Path:
    """Write ``memory`` (L, B, r, d, C) to ``path`` atomically; refuses non-finite memories."""
    memory = memory.detach().to("cpu", torch.float32).contiguous()
    if memory.dim() != 5:
        raise MemoryFileError(f"a memory must be 5-D (layers, batch, width, hidden, C); got {tuple(memory.shape)}")
    if not torch.isfinite(memory).all():
        raise MemoryFileError(f"memory contains NaN or inf values; not writing '{path}' (lower the learning rate)")
    site = getattr(model, "site", "ffn") if model is not None else (extra or {}).get("memory_on", "ffn")
    meta = {
        "format": FORMAT,
        "version": FFN_VERSION if site == "ffn" else VERSION,
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
                    mlp_activation=model.mlp_activation, memory_on=site)
    meta = json.loads(json.dumps(meta))  # the form it takes in the file (tuples -> lists)
    meta["checksum"] = _checksum(memory, meta)
    return atomic_write(Path(path), lambda tmp: save_file({"memory": memory}, tmp,
                                                          metadata={"locas": json.dumps(meta)}))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__


def _damaged(path, what: str) -> MemoryFileError:
    return MemoryFileError(f"'{path}' is not a readable memory file ({what}); re-create it with `locas memorize` "
                           "or copy it again")


def read_memory_info(path) -> dict:
    """The JSON metadata of a memory file, validating that it is one (its tensor is checked by ``load_memory``)."""
    path = Path(path)
    if not path.exists():
        raise MemoryFileError(f"memory file '{path}' not found; check the path")
    if not path.is_file():
        raise MemoryFileError(f"'{path}' is a directory, not a memory file; give a .locas file")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("locas")
            names = list(f.keys())
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # safetensors raises several types (a Rust panic too) for damaged headers
        raise _damaged(path, f"truncated or corrupt: {_first_line(exc)}") from None
    if raw is None:
        raise MemoryFileError(f"'{path}' is a safetensors file but not a locas memory (no 'locas' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise _damaged(path, "its metadata is not valid JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _damaged(path, "its metadata is not a locas memory's")
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise MemoryFileError(f"'{path}' has unsupported format {meta.get('format')} v{meta.get('version')}; "
                              "upgrade locas")
    if names != ["memory"] or not all(isinstance(meta.get(k), int) and meta[k] > 0 for k in SHAPE_KEYS) \
            or not isinstance(meta.get("layers"), list) or not all(isinstance(i, int) for i in meta["layers"]):
        raise _damaged(path, "its metadata is incomplete")
    if meta.get("memory_on", "ffn") not in SITES or (meta["version"] >= 3 and "memory_on" not in meta):
        raise _damaged(path, "its memory site (memory_on) is missing or unknown")
    return meta


def load_memory(path, model=None, *, device=None, strict: bool = True) -> torch.Tensor:
    """Read a memory file; with ``model``, check it was made for that model (``strict`` = fingerprint too).

    A Locas-MLP file also switches ``model`` to the memory activation it was trained with, an attention-path file
    (``memory_on: "attn"`` / ``"both"``) to that site (``LocasForCausalLM.set_site``).
    """
    meta = read_memory_info(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            memory = f.get_tensor("memory")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise _damaged(path, f"truncated or corrupt: {_first_line(exc)}") from None
    if memory.dtype != torch.float32 or tuple(memory.shape) != tuple(meta[k] for k in SHAPE_KEYS):
        raise _damaged(path, f"its tensor ({memory.dtype}, {tuple(memory.shape)}) does not match its metadata")
    if "checksum" in meta:
        if meta["checksum"] != _checksum(memory, meta):
            raise MemoryFileError(f"'{path}' failed its checksum: the file was changed or damaged after it was "
                                  "written; re-create it or copy it again")
    elif meta["version"] >= 2:
        raise _damaged(path, "its checksum is missing")
    else:
        warnings.warn(f"'{path}' was written by locas 0.1 and carries no checksum, so its bytes cannot be verified "
                      "(save it again to add one)", LocasWarning, stacklevel=2)
    site = meta.get("memory_on", "ffn")
    if model is not None:  # another model's memory is named as such, before any check of its layers
        mine = (model.config.model_type, model.site_slots(site), model.hidden_size)
        theirs = (meta.get("model_type"), meta.get("model_layers", meta["num_layers"]), meta["hidden_size"])
        if mine != theirs:
            raise MemoryFileError(
                f"'{path}' was made for {meta.get('base_model')} ({theirs[0]}, {theirs[1]} layers, "
                f"hidden {theirs[2]}), not this model ({mine[0]}, {mine[1]} layers, hidden {mine[2]}); "
                "load it with the model it was made for")
    if len(meta["layers"]) != memory.shape[0] or (model is not None and not all(
            0 <= i < model.site_slots(site) for i in meta["layers"])):
        raise _damaged(path, "its layer list does not match its tensor")
    if model is not None:
        if strict and meta.get("fingerprint") and meta["fingerprint"] != model_fingerprint(model):
            raise MemoryFileError(
                f"'{path}' was made for different weights ({meta.get('base_model')}); use that model, "
                "or pass strict=False (--no-strict) to load anyway")
        if meta.get("mlp_activation") and meta["mlp_activation"] != model.mlp_activation:
            model.set_mlp_activation(meta["mlp_activation"])  # the units must fire as they did in training
        model.set_site(site)
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
