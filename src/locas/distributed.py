"""Running many documents across processes and GPUs with ``torch.distributed``.

Launch any evaluation command under ``torchrun`` unchanged: documents are sharded
deterministically across ranks (unit ``i`` goes to rank ``i % world``), each rank trains its own
memories on its own device (``cuda:LOCAL_RANK`` when GPUs exist, CPU with gloo otherwise), and
rank 0 gathers the per-document results and writes the reports. Every document's computation is
independent and seeded by its settings, so results do not depend on the number of processes.

    >>> ctx = DistContext.from_env()                 # world 1 without torchrun
    >>> for unit in ctx.shard(units): ...
    >>> gathered = ctx.gather(local_results)         # list on rank 0, None elsewhere
    >>> results = run_sharded(ctx, docs, work, name=str, parts_dir="out/parts", resume=True)
    $ torchrun --nproc-per-node 2 -m locas.cli pg19 --book 10146 --book 10321 ...
    $ locas pg19 --num-gpus 4 ...                    # re-launches itself through torchrun
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str | None = None

    @classmethod
    def from_env(cls) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device, backend = f"cuda:{local_rank}", "nccl"
        else:  # CPU threads per process: the CLI's --threads default splits the cores between processes
            device, backend = "cpu", "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        return cls(rank=rank, world=world, local_rank=local_rank, device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, units: list) -> list:
        """This rank's share of ``units`` (round-robin, deterministic)."""
        return units[self.rank:: self.world]

    def gather(self, obj):
        """Python objects from every rank, as a list on rank 0 (``[obj]`` without distribution)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def relaunch_with_torchrun(num_procs: int, argv: list[str]) -> int:
    """Re-run this CLI under ``torch.distributed.run`` with ``num_procs`` processes per node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_procs}",
           "-m", "locas.cli", *argv]
    return subprocess.call(cmd)


def strip_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def run_sharded(ctx: DistContext | None, units: list, work: Callable, *, name: Callable = str,
                part: Callable | None = None, parts_dir=None, resume: bool = False, fingerprint=None,
                progress: bool = False, desc: str = "documents") -> list | None:
    """Run ``work(unit)`` for this rank's share of ``units``; on rank 0 return every result in unit order.

    ``work`` returns a JSON-serialisable result. With ``parts_dir`` each finished unit is kept
    atomically as ``<parts_dir>/<part(unit)>.json`` (with ``fingerprint``, e.g. the settings); with
    ``resume`` a kept part with the same fingerprint is reused instead of recomputed. A unit that
    raises does not stop the others; once all ranks are done, rank 0 raises one ``LocasError``
    naming each failed unit (``name(unit)``) and its rank. Other ranks return None.
    """
    from .core.files import atomic_write
    from .errors import LocasError

    ctx = ctx or DistContext()
    part = part or name
    fingerprint = json.loads(json.dumps(fingerprint))  # the form it takes after a round trip through a file
    local: dict[int, dict] = {}
    label = f"{desc} (rank {ctx.rank})" if ctx.world > 1 else desc
    for i in tqdm(ctx.shard(list(range(len(units)))), desc=label, disable=not progress, unit="doc",
                  dynamic_ncols=True):
        unit = units[i]
        try:
            path = Path(parts_dir) / f"{part(unit)}.json" if parts_dir is not None else None
            if resume and path is not None and path.is_file():
                kept = _read_part(path)
                if isinstance(kept, dict) and kept.get("fingerprint") == fingerprint and "result" in kept:
                    local[i] = {"result": kept["result"], "kept": True}
                    continue
                local[i] = {"stale": True}
            result = work(unit)
            if path is not None:
                text = json.dumps({"fingerprint": fingerprint, "result": result}, indent=1)
                atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
                result = json.loads(text)["result"]  # fresh and kept results take the same form
            local[i] = {**local.get(i, {}), "result": result, "kept": False}
        except Exception as exc:  # keep going: the other documents still finish and are kept
            msg = str(exc).splitlines()[0] if str(exc) else ""
            local[i] = {"error": f"{type(exc).__name__}: {msg}", "rank": ctx.rank}
            if ctx.world > 1:  # one process: the final error names it; several: say it as it happens
                print(f"[locas rank {ctx.rank}] {name(unit)} failed: {local[i]['error']}", file=sys.stderr, flush=True)
    gathered = ctx.gather(local)
    if not ctx.is_main:
        return None
    merged = {i: v for got in gathered for i, v in got.items()}
    kept = [name(units[i]) for i in sorted(merged) if merged[i].get("kept")]
    if kept:
        print(f"[locas] kept {len(kept)} finished unit(s) from an earlier run: {', '.join(kept)}")
    stale = [name(units[i]) for i in sorted(merged) if merged[i].get("stale")]
    if stale:
        print(f"[locas] reran {len(stale)} unit(s) whose kept result had other settings: {', '.join(stale)}")
    failures = [(units[i], v) for i, v in sorted(merged.items()) if "error" in v]
    if failures:
        lines = "; ".join(f"{name(u)} failed on rank {v['rank']}: {v['error']}" for u, v in failures)
        where = f"finished documents are kept in {parts_dir}; fix and rerun with --resume" if parts_dir is not None \
            else "the other documents finished"
        raise LocasError(f"{lines} ({where})")
    return [merged[i]["result"] for i in range(len(units))]


def _read_part(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable: computed again
        return None
