"""Where this process stands in a `torchrun` group (one process per GPU), and how to start one.

The Trainer does the distributed training itself (DDP); the job only needs to know which
process writes the run folder and to take stop decisions that every rank agrees on.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in this training group (1 outside torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this is rank 0, the process that writes the run folder."""
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int | None:
    """This process's GPU index on its machine under torchrun, else None."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None else None


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is true on any (a collective: every rank must call it).

    Outside a process group it returns `flag`.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = f"cuda:{local_rank() or 0}" if dist.get_backend() == "nccl" else "cpu"
    votes = torch.tensor([int(flag)], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return bool(votes.item())


def broadcast_from_main(value):
    """Rank 0's `value` on every rank (a collective); outside a process group, `value`."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def torchrun_command(num_processes: int, argv: list[str]) -> list[str]:
    """The command that runs `python -m workbench ARGV` in `num_processes` DDP processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={num_processes}",
        "-m",
        "workbench",
        *argv,
    ]
