"""Data-parallel profiling under torch.distributed (``torchrun --nproc_per_node N -m layerlens_opt.profiling ...``).

Every rank loads the model and the data with the same seed (identical weights, rows and
batches); each rank computes its share of every batch and of the held-out rows, and the
per-layer statistics are all-reduced, so every rank holds the one-process numbers (up to
float summation order) and rank 0 writes the manifest. Gloo on CPU, NCCL on CUDA.

With one process (no ``WORLD_SIZE`` > 1 in the environment) nothing here does anything.
"""

from __future__ import annotations

import os

import torch


def init_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def share(items: list) -> list:
    """This rank's share of ``items`` (every size-th item from its rank): all ranks together see each once."""
    rank, size = world()
    return items[rank::size] if size > 1 else items


def all_sum(value):
    """Sum a float or a tensor over the ranks (a tensor in place); returns the summed value."""
    rank, size = world()
    if size == 1:
        return value
    import torch.distributed as dist

    if isinstance(value, torch.Tensor):
        dist.all_reduce(value)
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0])


def all_sum_grads(parameters) -> None:
    """Sum the gradients of ``parameters`` over the ranks (parameters without a gradient are skipped on every rank alike)."""
    if world()[1] == 1:
        return
    for p in parameters:
        if p.grad is not None:
            all_sum(p.grad)
