"""Several processes (`torch.distributed`, DistributedDataParallel): every rank sees the same numbers.

    >>> dist.init_process_group("nccl")                 # or gloo; torchrun sets the environment
    >>> model = DDP(Net().to(rank), device_ids=[rank])
    >>> monitor = gradwatch.watch(model, optimizer)     # nothing else to do: detected automatically

`watch()` notices an initialised process group with more than one rank and gives the monitor a
`StepReducer`. At the end of every step the monitor's packed statistics buffer goes through one
`all_reduce` (SUM, launched asynchronously) before it is read back, so the detectors of every
rank receive the same `StepStats` and raise the same alerts. Only rank 0 keeps the console,
JSONL and TensorBoard sinks.

How each number is combined (DDP has already averaged the gradients, and the weights are equal):

* per-timestep norms (gradient and activation): root of the sum of squares over ranks, i.e. the
  norm over the global batch; a NaN/Inf on any rank therefore shows on every rank;
* every other value (parameter, gradient and update norms, clip figures, dead/saturated shares):
  the mean over ranks (equal values stay equal);
* the loss, when given as a tensor: the mean over ranks (one more one-element `all_reduce`).

Ranks may see sequences of different lengths: per-timestep vectors are padded to the longest
one, agreed through a small synchronous `all_reduce(MAX)` of the lengths on a CPU (gloo) group,
which never waits for the accelerator.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import torch

from .stream.schema import Reduce, Segments, StepLayout
from .stream.readback import PendingReadback, start_readback

__all__ = ["StepReducer", "is_distributed", "rank", "is_main_process", "reducer_for_current_group"]

log = logging.getLogger("gradwatch")

MISMATCH = ("the ranks measured different statistics this step (different modules ran, or the probe "
            "schedule differs; call gradwatch.watch with the same options on every rank)")
CPU_UNDER_NCCL = "the statistics are on the CPU but the process group has no CPU backend (gloo)"


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)


def rank() -> int:
    """This process's global rank (0 outside `torch.distributed`)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, and in every non-distributed run: the process that prints and writes files."""
    return rank() == 0


def reducer_for_current_group() -> "StepReducer | None":
    """A `StepReducer` over the default process group when running distributed, else None."""
    return StepReducer() if is_distributed() else None


class ReducedReadback(PendingReadback):
    """The read-back of a buffer whose `all_reduce` may still be running (gloo runs it in the background)."""

    def __init__(self, work: Any, buffer: torch.Tensor, finish: Any) -> None:
        super().__init__(buffer, None)
        self._work, self._finish = work, finish
        self._inner: PendingReadback | None = None

    def _start(self) -> PendingReadback:
        if self._inner is None:
            self._work.wait()
            self._inner = start_readback(self._finish(self.host))
        return self._inner

    def ready(self) -> bool:
        if self._inner is None and not self._work.is_completed():
            return False
        return self._start().ready()

    def values(self) -> list[float]:
        return self._start().values()


class StepReducer:
    """Combines one step's packed statistics across the ranks of a process group.

        >>> reducer = StepReducer()                      # default group; watch() does this for you
        >>> readback, segments = reducer.start(flat, segments, layout)

    Every rank must call `start` (and `start_loss`) at the same points of its step, which holds
    when every rank runs the same training loop, as DistributedDataParallel requires anyway.
    """

    def __init__(self, group: Any = None) -> None:
        dist = torch.distributed
        self.group = group
        self.world = dist.get_world_size(group)
        self.cpu_capable = "gloo" in str(dist.get_backend(group))  # "gloo", or "cpu:gloo,cuda:nccl"
        # The lengths are host integers: agree on them over CPU so nothing waits for the GPU.
        self.meta_group = group if self.cpu_capable else dist.new_group(backend="gloo")
        self._warned = False

    # ------------------------------------------------------------------ statistics buffer
    def start(self, flat: torch.Tensor, segments: Segments, layout: StepLayout) -> tuple[PendingReadback, Segments]:
        """Launch the reduction of one step's buffer; returns its read-back and the combined segments.

        Each segment is reduced as its channel declares (`schema.Reduce`): `MEAN` segments keep
        their place; `ROOT_SUM_SQUARE` ones (per-timestep norms, whose lengths may differ between
        ranks) are squared, padded to the longest rank's length, summed and rooted."""
        dist = torch.distributed
        varying = layout.summed_slots
        offsets, pos = {}, 0
        for slot, n in segments:
            offsets[slot] = (pos, n)
            pos += n
        fixed = [(slot, n) for slot, n in segments if layout.channels[slot].reduce is Reduce.MEAN]
        signature = zlib.crc32(repr([(layout.describe(slot), n) for slot, n in fixed]).encode())
        lengths = [offsets[s][1] if s in offsets else 0 for s in varying]
        meta = torch.tensor([signature, -signature] + lengths, dtype=torch.int64)
        dist.all_reduce(meta, op=dist.ReduceOp.MAX, group=self.meta_group)
        agreed = meta.tolist()
        if agreed[0] != -agreed[1]:
            return self._local(flat, segments, MISMATCH)
        parts, out_segments = [], []
        for slot, n in fixed:
            start = offsets[slot][0]
            parts.append(flat[start : start + n])
            out_segments.append((slot, n))
        fixed_end = sum(n for _, n in fixed)
        for slot, total in zip(varying, agreed[2:]):
            if total == 0:
                continue
            start, n = offsets.get(slot, (0, 0))
            local = flat[start : start + n].square()
            parts.append(torch.cat([local, flat.new_zeros(total - n)]) if total > n else local)
            out_segments.append((slot, total))
        buffer = torch.cat(parts) if parts else flat.new_zeros(0)
        if buffer.device.type == "cpu" and not self.cpu_capable:
            return self._local(flat, segments, CPU_UNDER_NCCL)
        work = dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        rooted = fixed_end < buffer.shape[0]

        def finish(summed: torch.Tensor) -> torch.Tensor:
            out = summed.clone()
            out[:fixed_end] /= self.world
            if rooted:
                out[fixed_end:] = out[fixed_end:].sqrt()
            return out

        if buffer.device.type != "cpu":
            work.wait()  # NCCL: makes the current stream wait; the host does not block
            return start_readback(finish(buffer)), out_segments
        return ReducedReadback(work, buffer, finish), out_segments

    def _local(self, flat: torch.Tensor, segments: Segments, why: str) -> tuple[PendingReadback, Segments]:
        if not self._warned:
            self._warned = True
            log.warning("gradwatch: %s, so this step's numbers are this rank's own; alerts may differ "
                        "between ranks.", why)
        return start_readback(flat), segments

    # ------------------------------------------------------------------ loss
    def start_loss(self, value: torch.Tensor) -> PendingReadback:
        """Launch the mean of a one-element loss tensor over the ranks."""
        dist = torch.distributed
        if value.device.type == "cpu" and not self.cpu_capable:
            return start_readback(value)
        buffer = value.detach().float().clone()
        work = dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        if buffer.device.type != "cpu":
            work.wait()
            return start_readback(buffer / self.world)
        return ReducedReadback(work, buffer, lambda summed: summed / self.world)
