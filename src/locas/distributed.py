"""Running many documents across processes and GPUs with ``torch.distributed``.

Launch any evaluation command under ``torchrun`` unchanged: documents are sharded
deterministically across ranks (unit ``i`` goes to rank ``i % world``), each rank trains its own
memories on its own device (``cuda:LOCAL_RANK`` when GPUs exist, CPU with gloo otherwise), and
rank 0 gathers the per-document results and writes the reports. Every document's computation is
independent and seeded by its settings, so results do not depend on the number of processes.

    >>> ctx = DistContext.from_env()                 # world 1 without torchrun
    >>> for unit in ctx.shard(units): ...
    >>> gathered = ctx.gather(local_results)         # list on rank 0, None elsewhere
    $ torchrun --nproc-per-node 2 -m locas.cli pg19 --book 10146 --book 10321 ...
    $ locas pg19 --num-gpus 4 ...                    # re-launches itself through torchrun
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch


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
        else:
            device, backend = "cpu", "gloo"
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
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
