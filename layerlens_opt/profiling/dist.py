"""Data-parallel profiling under torch.distributed (``torchrun --nproc_per_node N -m layerlens_opt.profiling ...``).

Every rank loads the model and the data with the same seed (identical weights, rows and
batches); each rank computes its share of every batch and of the held-out rows, and the
per-layer statistics are all-reduced, so every rank holds the one-process numbers (up to
float summation order) and rank 0 writes the manifest. Gloo on CPU, NCCL on CUDA.

With one process (no ``WORLD_SIZE`` > 1 in the environment) nothing here does anything.
"""

from __future__ import annotations

import os
from contextvars import ContextVar

import torch

from ..errors import LayerlensError


def init_from_env(device: str = "cpu") -> None:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda") and torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def finish() -> None:
    """Leave the process group together (a barrier, then its teardown), so that no rank exits while gloo's
    threads still serve a peer (which aborts the process: "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Rank 0, or the only process (after :func:`finish`, torchrun's ``RANK`` says which rank this was)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


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


#: the whole batch's texts while a rank runs its share of it (set by :class:`one_process_dropout`)
_BATCH_TEXTS: ContextVar[list | None] = ContextVar("layerlens_batch_texts", default=None)


def whole_batch(texts: list) -> list:
    """The texts of the whole training batch this rank's ``texts`` are a share of (``texts`` outside
    :class:`one_process_dropout`): a text encoder pads to their longest, as one process would."""
    return _BATCH_TEXTS.get() or texts


class one_process_dropout:
    """While a rank runs its share of a training batch, dropout draws the masks one process would draw.

    One process draws each dropout mask for the whole batch from the global generator; a rank that drew
    masks for its own rows only would train on different masks (and leave the generators of the ranks
    apart). Inside this context ``torch.nn.functional.dropout`` (which ``nn.Dropout`` and Hugging Face's
    eager attention call) draws the whole batch's mask, as ``torch``'s own dropout does (Bernoulli
    noise over the tensor, divided by 1 - p), and applies the rows of this rank's share. Hugging Face
    encoders are switched from SDPA to eager attention for the duration, since SDPA draws its attention
    dropout inside one kernel; the rows are padded to the whole batch's longest text (:func:`whole_batch`), so
    every mask has the one-process shape. A rank's share is ``rows`` (positions in the batch of ``size``).
    """

    def __init__(self, model, texts: list, rows: list[int]):
        self.model, self.texts, self.rows, self.size = model, texts, torch.as_tensor(rows), len(texts)

    def __enter__(self):
        import torch.nn.functional as F

        self._dropout = F.dropout
        rows, size, own = self.rows, self.size, F.dropout

        def dropout(input, p=0.5, training=True, inplace=False):
            if not training or p <= 0.0 or p >= 1.0:
                return own(input, p, training, inplace)
            if input.dim() == 0 or input.shape[0] != len(rows):
                raise LayerlensError(f"data-parallel profiling: a dropout on a tensor of shape {tuple(input.shape)} is not over the "
                                   f"batch's {len(rows)} rows of this rank; run the probe in one process")
            noise = torch.empty((size, *input.shape[1:]), dtype=input.dtype, device=input.device).bernoulli_(1 - p)
            noise.div_(1 - p)
            return input * noise[rows.to(input.device)]

        F.dropout = dropout
        self._attn = []
        for m in self.model.modules():
            config = getattr(m, "config", None)
            if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(m, "set_attn_implementation"):
                m.set_attn_implementation("eager")
                self._attn.append(m)
        self._batch = _BATCH_TEXTS.set(self.texts)
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F

        F.dropout = self._dropout
        for m in self._attn:
            m.set_attn_implementation("sdpa")
        _BATCH_TEXTS.reset(self._batch)
        return False
