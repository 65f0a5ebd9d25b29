"""Bring a device tensor to the host without making the host wait for the device.

    >>> pending = start_readback(flat)       # launches an async copy (CUDA) or a copy (CPU)
    >>> if pending.ready(): values = pending.values()

On CUDA the copy goes to pinned memory with `non_blocking=True` and a recorded event;
`ready()` only queries the event. `values()` is the one place where gradwatch turns tensors
into Python numbers, and it does so from a host buffer that has already arrived.
"""

from __future__ import annotations

import torch

__all__ = ["PendingReadback", "host_loss", "start_readback"]

class PendingReadback:
    """A host copy of a device tensor that is, or will soon be, complete."""

    def __init__(self, host: torch.Tensor, event: "torch.cuda.Event | None") -> None:
        self.host = host
        self.event = event

    def ready(self) -> bool:
        return self.event is None or bool(self.event.query())  # type: ignore[no-untyped-call]

    def values(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


def start_readback(tensor: torch.Tensor, *, owned: bool = False) -> PendingReadback:
    """Start copying a 1-D tensor to the host; returns immediately on CUDA.

    `owned`: the tensor is a buffer gradwatch just made and nobody else holds (a packed step); on
    the CPU it is then read in place instead of copied."""
    tensor = tensor.detach()
    if owned and tensor.device.type == "cpu":
        return PendingReadback(tensor, None)
    if tensor.device.type == "cuda":
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record()
    else:
        host = tensor.to("cpu", copy=True)
        event = None
    return PendingReadback(host, event)


def host_loss(loss: torch.Tensor) -> float | None:
    """A plain float32 CPU tensor's one value as a Python float, read now; None for any other
    tensor (CUDA, another dtype, a tensor subclass), which takes `start_readback`'s copy instead.

    The same float, at the same moment, as the copy `start_readback(loss.reshape(1).float())`
    read back at once (a float32 widened to a Python float either way), without the four torch
    operations of that copy. The CPU has no device to wait for (tests/test_hot_path.py allows this
    function's conversion); CUDA keeps the asynchronous copy."""
    if type(loss) is torch.Tensor and loss.dtype == torch.float32 and loss.device.type == "cpu":
        return loss.item()
    return None
