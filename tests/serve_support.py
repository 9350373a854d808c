"""A `locas serve` on the tiny chat model, started one way for tests/test_serve.py, tests/test_schema_fuzz.py and
benchmarks/fuzz.py: the model, memory files for it, an upload helper and the running server.

    >>> lm = served_lm()
    >>> with open_server(lm, memory_files(lm, tmp / "files"), tmp / "served") as (url, srv):
    ...     httpx.get(f"{url}/health")
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from conftest import random_memory
from locas import save_memory
from locas.serve.app import Limits, Server, serving
from test_locomo_support import char_lm


def served_lm():
    """A tiny character-level chat model (``max_positions=256``, so context limits are cheap to hit)."""
    torch.set_num_threads(1)
    return char_lm(seed=5, chat=True, max_positions=256)


def memory_files(lm, root: Path) -> dict[str, Path]:
    """Memory files of several widths for ``lm`` (a, b, c), one of another model, and a truncated one."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, width, seed in [("a", 4, 11), ("b", 8, 12), ("c", 2, 13)]:
        out[name] = root / f"{name}.locas"
        save_memory(random_memory(lm, width=width, seed=seed, scale=2.0), out[name], model=lm)
    other = char_lm(seed=9, layers=3)
    out["other"] = root / "other.locas"
    save_memory(random_memory(other, width=4), out["other"], model=other)
    out["corrupt"] = root / "corrupt.locas"
    out["corrupt"].write_bytes(out["a"].read_bytes()[:-40])
    return out


def upload(client: httpx.Client, path, memory_id: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/v1/memories", files={"file": (path.name, path.read_bytes())}, data={"id": memory_id},
                       headers=headers)


@contextmanager
def open_server(lm, files: dict[str, Path], memory_dir: Path):
    """An open server (no keys) with memories a, b, c uploaded; yields (url, Server)."""
    srv = Server(lm, memory_dir, max_batch=8, max_wait_ms=150, load_job_model=lambda: copy.deepcopy(lm),
                 limits=Limits(max_body_bytes=64 << 10))
    with serving(srv) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            for name in "abc":
                assert upload(client, files[name], name).status_code == 201
        yield url, srv

