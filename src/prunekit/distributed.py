"""Minimal ``torch.distributed`` helpers for torchrun launches (CPU gloo or CUDA nccl).

Typical use in a training script launched with ``torchrun --nproc_per_node N script.py``::

    info = init_from_env()          # no-op (rank 0 of 1) when not launched by torchrun
    try:
        fit(model, sharded_loader, cfg, device=info.device, ...)   # fit wraps the model in DDP itself
    finally:
        cleanup()

All helpers work (as identities / single-rank answers) when the process group is not initialised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from prunekit.errors import PrunekitError

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "check_agreement",
    "cleanup",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main",
    "map_sharded",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, and its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise PrunekitError(
            f"environment variable {name}={raw!r} is not an integer (launch with torchrun)"
        ) from None


def init_from_env(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the default process group from torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK).

    Args:
        device: ``"cpu"`` forces gloo; ``"cuda"`` (or None with a GPU present) uses nccl with
            ``cuda:LOCAL_RANK`` as this process's device (``torch.cuda.set_device`` is called).
        timeout_s: collective timeout in seconds.

    Returns:
        :class:`DistInfo`. When RANK/WORLD_SIZE are not set (not launched by torchrun) nothing is initialised
        and ``DistInfo(rank=0, world_size=1, device=device or best available)`` is returned. Calling it again
        once initialised returns the current info without re-initialising.

    Raises:
        PrunekitError: malformed env vars, CUDA requested but unavailable, or LOCAL_RANK has no GPU.
    """
    want = torch.device(device) if device is not None else None
    if want is None:
        want = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        if want.type == "cuda" and not torch.cuda.is_available():
            raise PrunekitError("device 'cuda' requested but no CUDA GPU is available; use device 'cpu'")
        return DistInfo(device=want)
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    if want.type == "cuda":
        if not torch.cuda.is_available():
            raise PrunekitError("device 'cuda' requested but no CUDA GPU is available; use device 'cpu'")
        if local_rank >= torch.cuda.device_count():
            raise PrunekitError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower --nproc_per_node"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(rank=rank, world_size=world, **kwargs)
    else:
        backend = dist.get_backend()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 or when not distributed: the process that writes checkpoints, logs and progress."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over all ranks as a new tensor (``t`` is not modified); a copy when not distributed.

    The tensor must live on a device the backend supports (CPU for gloo, CUDA for nccl).
    """
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over all ranks (floating result), as a new tensor; identity copy when not distributed."""
    out = all_reduce_sum(t if t.is_floating_point() else t.double())
    return out / get_world_size()


def all_gather_objects(obj: Any) -> list[Any]:
    """Picklable ``obj`` from every rank, as a list indexed by rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def map_sharded(fn: Callable[[list[Any]], Sequence[Any]], items: Sequence[Any]) -> list[Any]:
    """``fn(items)`` with the work split over the ranks: rank ``r`` calls ``fn`` on ``items[r::world]`` (one call,
    possibly empty), the results are all-gathered and put back in ``items`` order on every rank. ``fn`` must give
    every rank the same value for the same item (e.g. one model, unsharded evaluation data) and return one picklable
    result per item. Not distributed: ``list(fn(list(items)))``.

    Raises:
        PrunekitError: ``fn`` returned a different number of results than it was given items.
    """
    items = list(items)
    world, rank = get_world_size(), get_rank()
    mine = items[rank::world] if world > 1 else items
    got = list(fn(mine)) if mine else []
    if len(got) != len(mine):
        raise PrunekitError(f"map_sharded: fn returned {len(got)} results for {len(mine)} items")
    if world == 1:
        return got
    out: list[Any] = [None] * len(items)
    for r, part in enumerate(all_gather_objects(got)):
        out[r::world] = part
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable ``obj`` on every rank (``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(model: torch.nn.Module) -> None:
    """Overwrite every parameter and buffer of ``model`` with rank 0's, in place (no-op when not distributed).

    Every rank must hold the same architecture (the same state_dict keys and shapes, in the same order); tensors
    must live on a device the backend supports (CPU for gloo, CUDA for nccl).
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def check_agreement(value: Any, what: str) -> None:
    """Raise on every rank unless all ranks hold an equal picklable ``value`` (no-op when not distributed).

    Used after each decision a method takes on every rank (a plan, a kept-channel set, a search result) so that a
    rank that diverged fails loudly instead of training another network.

    Raises:
        PrunekitError: the ranks disagree; the message names ``what`` and which ranks differ from rank 0.
    """
    values = all_gather_objects(value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise PrunekitError(
            f"ranks disagree on {what}: rank(s) {differ} differ from rank 0; a step of this run is not "
            "rank-deterministic (report it), or run it with one process"
        )


def cleanup() -> None:
    """Destroy the default process group if one is initialised (safe to call always)."""
    if is_distributed():
        dist.destroy_process_group()
