"""Data-parallel meta-training with ``torch.distributed``: each process adapts its share
of the meta-batch, and the meta-gradient is all-reduced before the optimizer step.

Launch with ``torchrun --nproc-per-node N -m mumo_fast.cli train ...``: torchrun sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``, and :func:`init_from_env` joins the process
group (gloo on the CPU, nccl on CUDA with one GPU per process, ``cuda:LOCAL_RANK``).
Without torchrun, or with one process, nothing here is used and training is the
single-process computation, bit for bit.

The meta-loss is the mean of the per-task query losses over the whole meta-batch of T
tasks. A process holding ``t_r`` of them computes the mean over its own tasks, so the
exact meta-gradient is ``sum_r t_r * g_r / T``: :func:`reduce_step` all-reduces the
task-weighted gradients (and the logged losses) in one flat buffer, which also makes
uneven splits (T not divisible by the number of processes) exact. Every process then
holds the same gradient, clips it the same way and takes the same optimizer step, so
the parameters stay identical (they are broadcast from rank 0 once, at the start).
A learner that takes its own update step (navigation's TRPO) gets :func:`task_mean` as
its ``reduce`` hook instead and averages every quantity of its step the same way.
This is an explicit all-reduce rather than DistributedDataParallel: the inner loop
differentiates through ``autograd.grad(create_graph=True)``, which DDP's backward hooks
do not support, and one all-reduce per meta-step is all the communication there is.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

# torch's own default for gloo: long enough for rank 0's validation, evaluation and
# checkpoint writing, during which the other processes wait in the next collective
DEFAULT_TIMEOUT = 1800.0


class DistributedError(RuntimeError):
    """A collective failed or timed out: another process ended or hangs."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of
    several: ``WORLD_SIZE`` above 1 in the environment."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that logs, evaluates and writes files."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_group(backend: str, timeout: float, **init: Any) -> None:
    """``torch.distributed.init_process_group(backend, timeout=..., **init)``, made so
    that :func:`shutdown` frees the group. ``timeout`` in seconds.

    torch.distributed.nn.functional's functions take ``group=group.WORLD`` as a default,
    evaluated when the module is imported: imported after the group exists (torch._dynamo
    imports it, lazily), they hold the group for the life of the process, so
    destroy_process_group cannot free it and gloo's worker threads outlive the
    interpreter. On torch 2.14 such a thread releasing its last collective's tensors during
    interpreter shutdown aborts the process ("terminate called without an active
    exception"). Imported first, the defaults are None."""
    import torch.distributed.nn.functional  # noqa: F401

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout), **init)


def init_from_env(device: str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Join the process group torchrun describes in the environment (once; nothing
    when this is a single process). ``device``: the ``--device`` given; on CUDA each
    process takes ``cuda:LOCAL_RANK``. ``timeout``: seconds a collective may wait for
    the other processes before the run ends with an error. Returns whether this process
    is now one of several."""
    if not launched() or dist.is_initialized():
        return active()
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed")
    if timeout <= 0:
        raise ValueError(f"--dist-timeout must be positive, got {timeout:g}")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank())
    init_group("nccl" if cuda else "gloo", timeout)
    return active()


def shutdown() -> None:
    """Leave the process group; for one joined by :func:`init_group` this frees it and
    ends gloo's worker threads."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: torch.device) -> torch.device:
    """A CUDA device without an index means this process's GPU: ``cuda:LOCAL_RANK``."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def share(total: int, flag: str, *, world: int | None = None, of: int | None = None) -> int:
    """This process's share of ``total`` tasks (or tasks per mode): ``total // world``,
    one more on the first ``total % world`` ranks. ``flag`` names the option that sets
    ``total``, for the error when some process would get none."""
    world = world_size() if world is None else world
    r = rank() if of is None else of
    if total < world:
        raise ValueError(
            f"{flag} {total} cannot be split across {world} processes: each needs at least "
            f"one task; raise {flag} to {world} or more, or launch fewer processes"
        )
    return total // world + (1 if r < total % world else 0)


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A 63-bit seed for this rank's task generator, derived from (seed, rank, ...)
    by numpy's SeedSequence (independent streams for distinct inputs)."""
    words = np.random.SeedSequence([seed, rank, *more]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


def _fail(what: str, e: Exception) -> DistributedError:
    return DistributedError(
        f"rank {rank()}: {what} failed (another process ended, or did not answer within "
        f"the collective timeout, --dist-timeout): {e}"
    )


def barrier() -> None:
    if active():
        try:
            dist.barrier()
        except RuntimeError as e:
            raise _fail("waiting for the other processes", e) from e


def broadcast_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every process."""
    if not active():
        return
    try:
        with torch.no_grad():
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, 0)
    except RuntimeError as e:
        raise _fail("broadcasting the parameters from rank 0", e) from e


def _all_reduce_sum(flat: torch.Tensor, what: str) -> torch.Tensor:
    try:
        dist.all_reduce(flat)
    except RuntimeError as e:
        raise _fail(what, e) from e
    return flat


def task_mean(num_tasks: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """``reduce(x)``: the task-weighted mean over processes of a value ``x`` that each
    process computed as the mean over its own ``num_tasks`` tasks, i.e. the value of the
    whole meta-batch ``sum_r t_r * x_r / T`` (elementwise, any shape; summed in float64,
    returned in ``x``'s dtype and device, without gradient). Every process must call it
    with values of the same shape, as often as the others (one all-reduce per call).

    This is the hook of :func:`mumo_fast.meta.rl.trpo_step` (``reduce=``) for a learner
    that takes its own TRPO step: applied to the surrogate's gradient, to each
    Hessian-vector product of the KL and to the losses and KLs the line search compares,
    it makes every process take the TRPO step of the whole meta-batch."""
    if num_tasks < 1:
        raise ValueError(f"num_tasks must be positive, got {num_tasks}")

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if not active():
            return x
        flat = x.detach().reshape(-1).to(torch.float64) * num_tasks
        count = torch.tensor([float(num_tasks)], dtype=torch.float64, device=flat.device)
        flat = _all_reduce_sum(torch.cat([flat, count]), "the task-weighted all-reduce")
        return (flat[:-1] / flat[-1]).to(x.dtype).view(x.shape)

    return reduce


def reduce_step(
    params: Iterable[torch.nn.Parameter],
    stats: dict[str, float],
    num_tasks: int,
    flags: Sequence[float] = (),
) -> tuple[dict[str, float], list[float]]:
    """After each process's ``backward`` on its ``num_tasks`` tasks: replace every
    gradient by the task-weighted mean over processes (the meta-gradient of the whole
    meta-batch) and ``stats`` by the task-weighted mean of each value; ``flags`` are
    summed. One all-reduce. Gradients that are None on every process stay None; one
    that is None on some process only counts as zero there."""
    params = list(params)
    keys = sorted(stats)
    if not params:
        raise ValueError("reduce_step needs the parameters whose gradients to reduce")
    ref = params[0]
    have = torch.tensor([p.grad is not None for p in params], dtype=torch.float64)
    sizes = [p.numel() for p in params]
    head = torch.tensor(
        [float(num_tasks), *(num_tasks * stats[k] for k in keys), *flags], dtype=torch.float64
    )
    parts = [head.to(ref.device), have.to(ref.device)]
    parts += [
        p.grad.detach().flatten().to(torch.float64) * num_tasks
        if p.grad is not None
        else torch.zeros(n, dtype=torch.float64, device=ref.device)
        for p, n in zip(params, sizes)
    ]
    flat = _all_reduce_sum(torch.cat(parts), "the meta-gradient all-reduce")
    head = flat[: head.numel()].cpu()
    total = float(head[0])
    reduced = {k: float(head[1 + i]) / total for i, k in enumerate(keys)}
    out_flags = [float(v) for v in head[1 + len(keys) :]]
    offset = head.numel()
    present = flat[offset : offset + len(params)].cpu()
    offset += len(params)
    for p, n, seen in zip(params, sizes, present):
        grad = flat[offset : offset + n].view(p.shape) / total
        offset += n
        if seen > 0:
            p.grad = grad.to(p.dtype)
    return reduced, out_flags


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` as a list on rank 0 (None elsewhere)."""
    if not active():
        return [obj]
    out = [None] * world_size() if is_main() else None
    try:
        dist.gather_object(obj, out, dst=0)
    except RuntimeError as e:
        raise _fail("gathering the processes' states", e) from e
    return out
