"""Forward adapter for nn.RNN / nn.LSTM / nn.GRU (fused, possibly multi-layer, bidirectional).

    >>> adapter = StackForward(watched, session)     # installed as the module's `forward`
    >>> output, h_n = lstm(x)                        # same result, now measured

On ordinary steps the module's own forward runs and only its input and output are read.
On probe steps the stack runs layer by layer through the very same ATen kernels with the
same parameters, so each inner layer's input sequence is visible to autograd: outputs and
parameter gradients stay bit-identical on CPU (the fused kernels loop over layers the same
way, and inter-layer dropout draws from the RNG in the same order).
"""

from __future__ import annotations

import types
import weakref
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from .. import torch_compat
from .modules import WatchedModule
from .probe import observe_gradient, timestep_norms, timestep_probe
from .session import CaptureSession
from ..stream.accumulator import StepAccumulator
from ..stream.schema import ModuleSlots
from ..stats.tensor_stats import unit_activity

__all__ = ["ForwardAdapter", "StackForward", "CellForward", "PlainReplicas", "plain_forward", "installed_adapter"]


def plain_forward(module: nn.Module) -> Any:
    """The module's class forward bound to it (what an adapter pickled on its own unpickles to)."""
    return types.MethodType(type(module).forward, module)


def installed_adapter(module: nn.Module) -> "ForwardAdapter | None":
    """The gradwatch forward adapter installed on `module` (it is being watched), or None."""
    return _adapter_of(module.__dict__.get("forward"))


def _adapter_of(forward: Any) -> "ForwardAdapter | None":
    """The adapter behind a module's `forward` entry, when that entry is gradwatch's."""
    adapter = getattr(getattr(forward, "__func__", None), torch_compat.ADAPTER_ATTRIBUTE, None)
    return adapter if isinstance(adapter, ForwardAdapter) else None


class ForwardAdapter:
    """Common part of the forward adapters: install, remove, pickle as the unwatched module.

    `nn.DataParallel` on several GPUs runs replicas of the module, made by
    `_replicate_for_data_parallel`, which copies the module's `__dict__`, where the adapter
    lives, still bound to the original module. So the adapter also installs `PlainReplicas`:
    replicas run their class's plain forward with their own parameters. Replicas give no
    per-timestep or activation statistics; parameter statistics are unaffected (replica
    gradients flow back to the original parameters, which gradwatch reads).

    A third entry, `__getstate__`, makes pickling, `torch.save` and `copy.deepcopy` of a watched
    module see the state of the unwatched one: the pickle names no gradwatch object, so
    `torch.load` (weights_only) and processes without gradwatch load it as they would unwatched.
    """

    def __init__(self, watched: WatchedModule, session: CaptureSession) -> None:
        self.watched = watched
        self.session = session
        self.previous = watched.module.__dict__.get("forward")
        self.original = self.previous if self.previous is not None else plain_forward(watched.module)
        self.failed = False
        self.owns_replicas = False
        self.owns_getstate = False
        # what goes into the module's __dict__: a bound method that calls this adapter and that
        # torch.jit.script compiles as the class's forward (see torch_compat.scriptable_forward)
        self.bound = types.MethodType(torch_compat.scriptable_forward(self, type(watched.module).forward),
                                      watched.module)

    def __call__(self, input: Any, hx: Any = None) -> Any:
        """The measuring forward (each kind of module has its own)."""
        raise NotImplementedError

    def install(self) -> None:
        module = self.watched.module
        module.forward = self.bound
        if torch_compat.REPLICATE_ATTRIBUTE not in module.__dict__:  # a module with its own keeps it
            setattr(module, torch_compat.REPLICATE_ATTRIBUTE, PlainReplicas(module))
            self.owns_replicas = True
        if "__getstate__" not in module.__dict__:
            module.__dict__["__getstate__"] = _UnwatchedState(module)
            self.owns_getstate = True

    def remove(self) -> None:
        module = self.watched.module
        if self.owns_getstate and isinstance(module.__dict__.get("__getstate__"), _UnwatchedState):
            del module.__dict__["__getstate__"]
            self.owns_getstate = False
        if self.owns_replicas and isinstance(module.__dict__.get(torch_compat.REPLICATE_ATTRIBUTE), PlainReplicas):
            del module.__dict__[torch_compat.REPLICATE_ATTRIBUTE]
            self.owns_replicas = False
        if module.__dict__.get("forward") is self.bound:
            if self.previous is None:
                del module.__dict__["forward"]
            else:
                module.forward = self.previous

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Only reached when the adapter is pickled on its own (the module's state leaves it out).
        return plain_forward, (self.watched.module,)

    def measuring_mode(self) -> Literal["measure", "dry"] | None:
        """How this call is handled: "measure", "dry" (same operations, nothing recorded), or None
        (the module's own forward, unmeasured)."""
        if self.failed or not self.session.enabled or not torch.is_grad_enabled() or torch_compat.compiling():
            return None
        if torch_compat.jit_tracing():
            self.session.tell_once(
                "jit", f"'{self.watched.name}' runs inside torch.jit.trace: the traced graph contains the "
                "module's plain forward, and calls of the traced model are not measured (TorchScript runs "
                "outside Python, where gradwatch's hooks live). Watch the eager model to measure it.")
            return None
        if torch_compat.functorch_transform_active():
            return None  # torch.func.grad/vmap: wrapped tensors; the next ordinary forward is measured
        recomputing = torch_compat.in_checkpoint_recomputation()
        if not self.watched.module.training:
            if not recomputing:
                self.session.eval_forwards += 1  # validation without no_grad: not part of the training step
            return None
        if recomputing:
            # the original forward was measured (its graph is the one back-propagated); the
            # recomputation must take the same path (same saved tensors) and record nothing
            return "dry"
        self.session.forward_started()
        return "measure"

    def fail(self, exc: BaseException) -> None:
        stop = torch_compat.stop_recomputation_error()
        if stop is not None and isinstance(exc, stop):
            raise exc  # non-reentrant checkpointing ends its recomputation with it: let it through
        self.failed = True
        self.session.report_error(f"forward capture of '{self.watched.name}'", exc)


class _UnwatchedState:
    """A watched module's `__getstate__`: its class's state without gradwatch's entries."""

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)

    def __call__(self) -> Any:
        module = self._module()
        if module is None:
            raise RuntimeError("gradwatch: pickling a module that no longer exists")
        state = type(module).__getstate__(module)  # type: ignore[no-untyped-call]
        if not isinstance(state, dict):
            return state
        state = dict(state)
        state.pop("__getstate__", None)
        forward = _adapter_of(state.get("forward"))
        if forward is not None:
            if forward.previous is None:
                del state["forward"]
            else:
                state["forward"] = forward.previous
            if forward.owns_replicas and isinstance(state.get(torch_compat.REPLICATE_ATTRIBUTE), PlainReplicas):
                del state[torch_compat.REPLICATE_ATTRIBUTE]
        return state


class PlainReplicas:
    """A watched module's `_replicate_for_data_parallel`: replicas without gradwatch's forward.

        >>> replica = lstm._replicate_for_data_parallel()   # what nn.DataParallel does per GPU
        >>> "forward" in replica.__dict__                    # False: LSTM.forward, own parameters

    It stays in pickled and deep-copied watched modules (whose `forward` entry unpickles to the
    plain forward bound to the copy) so that their replicas do not call the copy's forward.
    """

    def __init__(self, module: nn.Module) -> None:
        self._module = weakref.ref(module)

    def __call__(self) -> nn.Module:
        module = self._module()
        if module is None:
            raise RuntimeError("gradwatch: replicating a module that no longer exists")
        replica = torch_compat.replicate_for_data_parallel(module)
        del replica.__dict__[torch_compat.REPLICATE_ATTRIBUTE]
        if isinstance(replica.__dict__.get("__getstate__"), _UnwatchedState):
            del replica.__dict__["__getstate__"]
        forward = replica.__dict__.get("forward")
        adapter = _adapter_of(forward)
        if adapter is not None:
            forward = adapter.previous  # what the unwatched module would have copied
        if forward is None or _is_plain_forward(forward, module):
            replica.__dict__.pop("forward", None)
        else:
            replica.__dict__["forward"] = forward
        return replica

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return PlainReplicas, (self._module(),)


def _is_plain_forward(forward: Any, module: nn.Module) -> bool:
    return getattr(forward, "__self__", None) is module and getattr(forward, "__func__", None) is type(module).forward


def final_state_sumsq(hidden: Any, num_layers: int, num_directions: int) -> torch.Tensor | None:
    """Σ of squares of the final state (h_n, and c_n for an LSTM) per layer, both directions together;
    None when `hidden` is not a stock final state (a subclass returning something else).

    A NaN/Inf born in layer l propagates through the recurrence to layer l's final state and to
    every layer above, never below: the lowest non-finite entry names the layer where it appeared,
    on steps without the layer-by-layer probe too.
    """
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    total = None
    for h in parts:
        if not isinstance(h, torch.Tensor) or h.dim() == 0 or h.shape[0] != num_layers * num_directions:
            return None
        sq = h.detach().float().square().reshape(num_layers, -1).sum(dim=1)
        total = sq if total is None else total + sq
    return total


def _seq_layout(module: nn.Module, data: torch.Tensor, batch_sizes: torch.Tensor | None) -> int | None:
    """Time dimension of a module input/output tensor (None for packed data)."""
    if batch_sizes is not None:
        return None
    if data.dim() == 2:  # unbatched (T, F)
        return 0
    return 1 if module.batch_first else 0


class StackForward(ForwardAdapter):
    """Measuring forward for fused recurrent stacks."""

    def __call__(self, input: Any, hx: Any = None) -> Any:
        mode = self.measuring_mode()
        if mode is None:
            return self.original(input, hx)
        session, name = self.session, self.watched.name
        acc = session.accumulator if mode == "measure" else StepAccumulator(session.accumulator.layout)
        slots = acc.layout.modules.get(name)
        if slots is None:
            return self.original(input, hx)  # attached after this step's layout was fixed: from the next step
        try:
            data, batch_sizes = (input.data, input.batch_sizes) if isinstance(input, PackedSequence) else (input, None)
            if data.numel() == 0:
                return self.original(input, hx)  # an empty batch: nothing to measure, the next one is
            tdim = _seq_layout(self.watched.module, data, batch_sizes)
            start = acc.continuation(name, hx)
            span = (start, start + acc.add_tensor(slots.in_act, data, start, time_dim=tdim, batch_sizes=batch_sizes))
            replay = session.probing and self.watched.replayable
        except Exception as exc:
            self.fail(exc)
            return self.original(input, hx)
        if replay:
            try:
                output = self._replay(input, hx, acc, slots, start)
            except Exception as exc:
                self.fail(exc)
                return self.original(input, hx)
        else:
            output = self.original(input, hx)
        try:
            return self._measure_output(output, tdim, batch_sizes, acc, slots, span)
        except Exception as exc:
            self.fail(exc)
            return output

    def _measure_output(self, output: Any, tdim: int | None, batch_sizes: torch.Tensor | None,
                        acc: StepAccumulator, slots: ModuleSlots, span: tuple[int, int]) -> Any:
        """Read the output and final state; the returned output is the very object the module returned."""
        start = span[0]
        y, hidden = output
        data = y.data if isinstance(y, PackedSequence) else y
        measured = acc.add_measured(slots.out_act, data, start, time_dim=tdim, batch_sizes=batch_sizes)
        # the final state names the layer only when the output is not finite (one layer: it can only
        # have appeared there); an output proven finite needs none
        if measured and self.watched.num_layers > 1:
            final = final_state_sumsq(hidden, self.watched.num_layers, self.watched.num_directions)
            if final is not None:
                acc.add_final(slots.final, final)
        acc.end_call(self.watched.name, hidden, span[1])
        if data.requires_grad:
            observe_gradient(data, sink=_gradient_sink(acc, slots.out_grad, start, tdim, batch_sizes), on_error=self.fail)
        return output

    def _replay(self, input: Any, hx: Any, acc: StepAccumulator, slots: ModuleSlots, start: int) -> Any:
        """The module's forward, run one layer at a time with probes between layers."""
        m: Any = self.watched.module
        is_lstm = isinstance(m, nn.LSTM)
        torch_compat.refresh_flat_weights(m)
        packed = isinstance(input, PackedSequence)
        ndir = 2 if m.bidirectional else 1
        real_hidden = m.proj_size if getattr(m, "proj_size", 0) > 0 else m.hidden_size
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
            is_batched = True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(m).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            data, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
            is_batched = input.dim() == 3
            if not is_batched:
                data = input.unsqueeze(0 if m.batch_first else 1)
            batch = data.size(0) if m.batch_first else data.size(1)
        hx = self._initial_state(m, hx, is_lstm, is_batched, batch, ndir, real_hidden, data, sorted_indices, batch_sizes)
        tdim = None if packed else (1 if m.batch_first else 0)
        output, hidden = self._run_layers(m, data, hx, batch_sizes, tdim, is_lstm, ndir, acc, slots, start)
        if packed:
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), m.permute_hidden(
                hidden, unsorted_indices
            )
        if not is_batched:
            output = output.squeeze(0 if m.batch_first else 1)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return output, hidden

    @staticmethod
    def _initial_state(m: Any, hx: Any, is_lstm: bool, is_batched: bool, batch: int, ndir: int, real_hidden: int,
                       data: torch.Tensor, sorted_indices: torch.Tensor | None,
                       batch_sizes: torch.Tensor | None) -> Any:
        layers = m.num_layers * ndir
        if hx is None:
            h = torch.zeros(layers, batch, real_hidden, dtype=data.dtype, device=data.device)
            if is_lstm:
                c = torch.zeros(layers, batch, m.hidden_size, dtype=data.dtype, device=data.device)
                hx = (h, c)
            else:
                hx = h
            if batch_sizes is None:
                m.check_forward_args(data, hx, batch_sizes)
            return hx
        if not is_batched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1)) if is_lstm else hx.unsqueeze(1)
        m.check_forward_args(data, hx, batch_sizes)
        return m.permute_hidden(hx, sorted_indices)

    def _run_layers(self, m: Any, data: torch.Tensor, hx: Any, batch_sizes: torch.Tensor | None, tdim: int | None,
                    is_lstm: bool, ndir: int, acc: StepAccumulator, slots: ModuleSlots,
                    start: int) -> tuple[torch.Tensor, Any]:
        weights = torch_compat.flat_weights(m)
        per_layer = len(weights) // (m.num_layers * ndir)
        call = torch_compat.rnn_kernel(m)
        x, finals = data, []
        hidden: Any
        for layer in range(m.num_layers):
            anchor = None
            if layer == 0 and not x.requires_grad:
                anchor = torch.zeros((), device=x.device, requires_grad=True)
            if x.requires_grad or anchor is not None:
                sink = _sink(acc, slots.xgrad[layer], start, tdim)
                x = timestep_probe(x, time_dim=tdim, sink=sink, batch_sizes=batch_sizes, anchor=anchor,
                                    on_error=self.fail)
            w = weights[layer * ndir * per_layer : (layer + 1) * ndir * per_layer]
            rows = slice(layer * ndir, (layer + 1) * ndir)
            h0 = (hx[0][rows], hx[1][rows]) if is_lstm else hx[rows]
            if batch_sizes is None:
                result = call(x, h0, w, m.bias, 1, 0.0, m.training, m.bidirectional, m.batch_first)
            else:
                result = call(x, batch_sizes, h0, w, m.bias, 1, 0.0, m.training, m.bidirectional)
            out = result[0]
            finals.append(result[1:])
            norms, squared = timestep_norms(out, tdim, batch_sizes)
            acc.add_timesteps(slots.act[layer], norms, start, squared=squared, source=out, time_dim=tdim)
            acc.add_activity(slots.activity[layer], unit_activity(out))
            if m.dropout and m.training and layer < m.num_layers - 1:
                out = torch.nn.functional.dropout(out, m.dropout, True)
            x = out
        if is_lstm:
            hidden = (torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals]))
        else:
            hidden = torch.cat([f[0] for f in finals])
        return x, hidden


class CellForward(ForwardAdapter):
    """Measuring forward for RNNCell / LSTMCell / GRUCell: each call is one timestep."""

    def __call__(self, input: Any, hx: Any = None) -> Any:
        mode = self.measuring_mode()
        if mode is None:
            return self.original(input, hx)
        session, name = self.session, self.watched.name
        acc = session.accumulator if mode == "measure" else StepAccumulator(session.accumulator.layout)
        slots = acc.layout.modules.get(name)
        if slots is None:
            return self.original(input, hx)  # attached after this step's layout was fixed: from the next step
        try:
            if input.numel() == 0:
                return self.original(input, hx)  # an empty batch: nothing to measure, the next one is
            t = acc.next_call(name)
            acc.add_tensor(slots.in_act, input, t, time_dim=None)
            x = input
            if session.probing:
                anchor = None if input.requires_grad else torch.zeros((), device=input.device, requires_grad=True)
                x = timestep_probe(input, time_dim=None, sink=_sink(acc, slots.xgrad[0], t, None), anchor=anchor,
                                   on_error=self.fail)
        except Exception as exc:
            self.fail(exc)
            return self.original(input, hx)
        output = self.original(x, hx)
        try:
            h = output[0] if isinstance(output, tuple) else output
            if session.probing:  # the layer's activation norms are recorded: measured, once for both slots
                h_norm = timestep_norms(h, None)[0]
                acc.add_timesteps(slots.out_act, h_norm, t, source=h)
                acc.add_timesteps(slots.act[0], h_norm, t, source=h)
                acc.add_activity(slots.activity[0], unit_activity(h))
            else:
                acc.add_measured(slots.out_act, h, t, time_dim=None)
            if h.requires_grad:
                observe_gradient(h, sink=_gradient_sink(acc, slots.out_grad, t, None, None), on_error=self.fail)
            return output
        except Exception as exc:
            self.fail(exc)
            return output


def _sink(acc: StepAccumulator, slot: int, offset: int, time_dim: int | None) -> Any:
    """A backward hook's sink: the gradient's norms go to `slot` from timestep `offset`."""
    def sink(norms: torch.Tensor, squared: bool, grad: torch.Tensor) -> None:
        acc.add_timesteps(slot, norms, offset, squared=squared, source=grad, time_dim=time_dim)
    return sink


def _gradient_sink(acc: StepAccumulator, slot: int, offset: int, time_dim: int | None,
                   batch_sizes: torch.Tensor | None) -> Any:
    """An output-gradient hook's sink: the gradient goes to `slot` from timestep `offset` (`add_tensor`)."""
    def sink(grad: torch.Tensor) -> None:
        acc.add_tensor(slot, grad, offset, time_dim=time_dim, batch_sizes=batch_sizes)
    return sink


ADAPTERS: dict[str, type[ForwardAdapter]] = {"stack": StackForward, "cell": CellForward}
"""Adapter class per module kind (see `modules.RECURRENT_KINDS`)."""
