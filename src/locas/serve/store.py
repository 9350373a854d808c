"""Memories on disk, per owner: ``<memory-dir>/<owner>/<id>.locas``, validated against the served model.

Ids are checked against one pattern (letters, digits, ``.``, ``_``, ``-``; no slash, no leading
dot), so a request never names a path; an owner only ever sees its own folder. Uploads are
written to a temporary file, loaded and checked in full (format, checksum, model, fingerprint),
and only then renamed into place; memories made by jobs are written atomically too, so the folder
never holds a half-written memory, and everything in it is there again after a restart. Temporary files
that a killed server left behind (``.*.tmp``) are removed when the store opens (one server per directory:
the CLI holds its lock).

    >>> store = MemoryStore("memories/", lm)
    >>> store.put_bytes("public", "notes", data)        # MemoryFileError if corrupt or for another model
    >>> store.get("public", "notes")                    # a ServingMemory on the model's device, cached
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from ..core.files import atomic_write, load_memory, read_memory_info, save_memory
from ..core.memory import ServingMemory
from ..errors import LocasError, MemoryFileError

MEMORY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StoreFull(LocasError):
    """An owner has as many memories as the server allows."""


class NotFound(LookupError):
    """No such memory for this owner (also what another owner's memory looks like)."""


def check_id(memory_id: str) -> str:
    if not isinstance(memory_id, str) or not MEMORY_ID.fullmatch(memory_id) or memory_id.endswith(".locas"):
        raise LocasError(f"bad memory id {memory_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return memory_id


class MemoryStore:
    def __init__(self, root, lm, max_per_owner: int = 1000, cache_size: int = 64, dtype: torch.dtype | None = None):
        """``dtype``: the serving copies' (None: the files' float32; ``ServingMemory.of``)."""
        self.root = Path(root)
        self.dtype = dtype
        self.root.mkdir(parents=True, exist_ok=True)
        self.lm = lm
        self.max_per_owner = max_per_owner
        self.cache: OrderedDict[tuple[str, str], ServingMemory] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.RLock()
        self.swept = self._sweep()

    def _sweep(self) -> int:
        """Remove the temporary files of uploads and atomic writes cut short by a kill; how many there were."""
        stale = [p for p in self.root.glob("**/.*.tmp") if p.is_file()]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def _path(self, owner: str, memory_id: str) -> Path:
        return self.root / owner / f"{check_id(memory_id)}.locas"

    def exists(self, owner: str, memory_id: str) -> bool:
        return self._path(owner, memory_id).is_file()

    def ids(self, owner: str) -> list[str]:
        folder = self.root / owner
        return sorted(p.stem for p in folder.glob("*.locas")) if folder.is_dir() else []

    def census(self) -> dict:
        """How many memories the directory holds, and for how many owners."""
        owners = [d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        counts = [len(list(d.glob("*.locas"))) for d in owners]
        return {"owners": sum(c > 0 for c in counts), "memories": sum(counts)}

    def describe(self, owner: str, memory_id: str) -> dict:
        path = self._path(owner, memory_id)
        try:
            stat = path.stat()
            meta = read_memory_info(path)
        except (FileNotFoundError, MemoryFileError):
            if not path.is_file():  # deleted meanwhile (a delete races a list): gone, not damaged
                raise NotFound(memory_id) from None
            raise
        return {"id": memory_id, "object": "memory", "created": int(stat.st_mtime), "bytes": stat.st_size,
                "width": meta["width"], "layers": len(meta["layers"]), "objective": meta.get("objective"),
                "tokens": meta.get("tokens"), "base_model": meta.get("base_model")}

    def list(self, owner: str) -> list[dict]:
        """The owner's memories; one deleted while the list is made is left out (not a failed list)."""
        out = []
        for memory_id in self.ids(owner):
            try:
                out.append(self.describe(owner, memory_id))
            except NotFound:
                continue
        return out

    def get(self, owner: str, memory_id: str) -> ServingMemory:
        """The memory on the model's device, laid out for decoding once (row 0 of a file with several rows)."""
        key = (owner, memory_id)
        with self.lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
            path = self._path(owner, memory_id)
            if not path.is_file():
                raise NotFound(memory_id)
            memory = ServingMemory.of(self._load(path)[:, :1], self.dtype)
            self.cache[key] = memory
            while len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
            return memory

    def read_bytes(self, owner: str, memory_id: str) -> bytes:
        """The memory's file, as stored (a download)."""
        path = self._path(owner, memory_id)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFound(memory_id) from None

    def _load(self, path) -> torch.Tensor:
        """A memory file checked in full against the served model. A Locas-MLP memory trained with another
        memory activation, or a memory of the other site (``memory_on``), is refused: loading it would switch the
        model of every request."""
        info = read_memory_info(path)
        made_with = info.get("mlp_activation")
        if made_with and self.lm.memory_kind == "mlp" and made_with != self.lm.mlp_activation:
            raise MemoryFileError(f"this memory was trained with mlp_activation '{made_with}' and the server runs "
                                  f"'{self.lm.mlp_activation}'; serve it from a server started with that activation")
        site = info.get("memory_on", "ffn")
        if site != self.lm.site:
            raise MemoryFileError(f"this memory sits on the {site} path and the server serves {self.lm.site} "
                                  f"memories; serve it from a server started with --memory-on {site}")
        return load_memory(path, model=self.lm)

    def room(self, owner: str, memory_id: str, pending: int = 0) -> None:
        """``FileExistsError`` if ``memory_id`` is taken, ``StoreFull`` if the owner (with ``pending`` memories
        still being made) is at the limit."""
        if self.exists(owner, memory_id):
            raise FileExistsError(memory_id)
        if len(self.ids(owner)) + pending >= self.max_per_owner:
            raise StoreFull(f"this key already has {self.max_per_owner} memories (or jobs making them), the "
                            "server's limit; delete some")

    def new_id(self, prefix: str = "mem") -> str:
        return f"{prefix}-{secrets.token_hex(6)}"

    def put_bytes(self, owner: str, memory_id: str, data: bytes) -> dict:
        """Store an uploaded memory file after checking it in full against the served model."""
        with self.lock:
            self.room(owner, memory_id)
            folder = self.root / owner
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".upload.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                try:
                    memory = self._load(tmp)  # corrupt, or for another model
                except MemoryFileError as exc:
                    raise MemoryFileError(str(exc).replace(f"'{tmp}'", "the uploaded file")) from None
                if memory.shape[1] != 1:
                    raise MemoryFileError(f"the uploaded memory has {memory.shape[1]} rows; upload a one-row memory")
                atomic_write(self._path(owner, memory_id), lambda t: os.replace(tmp, t))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return self.describe(owner, memory_id)

    def save(self, owner: str, memory_id: str, memory: torch.Tensor, extra: dict | None = None, layers=None) -> dict:
        """Store a memory made here (a job's) atomically."""
        with self.lock:
            self.room(owner, memory_id)
            save_memory(memory, self._path(owner, memory_id), model=self.lm, layers=layers, extra=extra)
            return self.describe(owner, memory_id)

    def delete(self, owner: str, memory_id: str) -> None:
        with self.lock:
            path = self._path(owner, memory_id)
            if not path.is_file():
                raise NotFound(memory_id)
            path.unlink()
            self.cache.pop((owner, memory_id), None)
