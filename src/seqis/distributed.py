"""``torch.distributed`` support: one global importance distribution across ranks.

Launched by ``torchrun``, every rank holds an identical sampler (same seed, same
factors), draws the same *global* batch of ``world * b`` indices and trains on its own
slice of it. Weights stay 1 / (N p_i) for the global N, and DDP averages gradients over
ranks, so the all-reduced gradient is the unbiased global estimate. Harvested and
refreshed factors are exchanged with one ``all_gather`` so the samplers never diverge.
In uniform mode the slices of a global permutation give DistributedSampler semantics:
no sequence is trained twice within an epoch.

A rank that dies or stalls makes the others' next collective fail after ``timeout``
seconds (gloo and NCCL honour the process-group timeout) instead of hanging forever.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


def replicas(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(num_replicas, rank)``, by default from ``torch.distributed`` when it is initialised."""
    initialised = dist.is_available() and dist.is_initialized()
    num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialised else 1)
    rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas - 1}] for {num_replicas} replica(s), got {rank}")
    return num_replicas, rank


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # created the process group, so it destroys it in close()

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str, timeout_s: float) -> DistContext:
        """Join the process group that torchrun describes in the environment, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        owns = not dist.is_initialized()  # a caller's own group is left to the caller
        if owns:
            use_cuda = device != "cpu" and torch.cuda.is_available()
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
            )
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.set_device(local)
        return cls(dist.get_rank(), dist.get_world_size(), local, owns)

    @classmethod
    def current(cls) -> DistContext:
        """The process group a caller (DDP, Lightning, torchrun) already initialised, if any."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def shard(self, global_batch: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch."""
        if not self.enabled:
            return global_batch
        size = len(global_batch) // self.world
        return global_batch[self.rank * size : (self.rank + 1) * size]

    def gather(self, tensor: Tensor) -> Tensor:
        """Concatenate equal-length tensors from every rank, in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (keeps stop decisions in lockstep)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def sum(self, tensor: Tensor) -> Tensor:
        """The element-wise sum of ``tensor`` over ranks, on every rank."""
        if not self.enabled:
            return tensor
        summed = tensor.to(self.comm_device)
        dist.all_reduce(summed)
        return summed.cpu()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_object(self, obj) -> list:
        if not self.enabled:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @property
    def comm_device(self) -> torch.device:
        if self.enabled and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
