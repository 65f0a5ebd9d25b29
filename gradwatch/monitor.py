"""`Monitor`: wires capture → stats → stream → detectors/actions → sinks for one model.

    >>> monitor = gradwatch.watch(model, optimizer)
    >>> ...train...; monitor.step(loss)
    >>> monitor.history[-1].layers[("lstm", 0)].grad_norm
    >>> monitor.close()

The monitor owns every hook it registers and removes them all in `close()`. Hooks only
record device tensors; numbers reach Python once a step's single buffer has been copied to
the host, and only then do detectors and sinks see the step.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from .capture.modules import WatchedModule, find_recurrent
from .capture.params import ParameterMap
from .capture.session import CaptureSession
from .capture.stack import ADAPTERS, _Adapter, installed_adapter
from .errors import GradwatchError
from .records import Alert, StepStats
from .stream.build import ModuleInfo, PendingStep, build_step_stats
from .stream.readback import PendingReadback, start_readback

__all__ = ["Monitor"]

log = logging.getLogger("gradwatch")


class Monitor:
    """Watches the recurrent modules of one model. Create it with `gradwatch.watch(...)`."""

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        every: int,
        history: int,
        strict: bool,
        detectors: Any,
        sinks: list[Any],
        actions: Any = None,
        reducer: Any = None,
    ) -> None:
        self.model = model
        self.optimizers = list(optimizers)
        self.every = every
        self.strict = strict
        self.history: collections.deque[StepStats] = collections.deque(maxlen=history)
        """The most recent finished steps (at most `history`); older ones went to the sinks."""
        self.alerts: list[Alert] = []
        """Every alert raised so far, in order."""
        self._detectors = detectors
        self._sinks = sinks
        self._actions = actions
        self.reducer = reducer
        """Combines each step's statistics across processes (`gradwatch.distributed`), or None."""
        self.external_steps = False
        """True when a driver (the Lightning callback) ends the steps: the optimizers' step hooks
        then do nothing, and the driver calls `before_update()` and `end_step()`."""
        self._disabled: set[str] = set()
        self._closed = False
        self._step = 0
        self._pending: collections.deque[PendingStep] = collections.deque()
        self._pending_loss: Any = None
        self._updated_since_loss = False
        """An optimizer step ended a step since the last `step(loss)`; when not, that loss belongs to
        an update that never happened (GradScaler found Inf and skipped `optimizer.step()`)."""
        self._grad_stats: dict | None = None
        self._optimizer_steps = 0
        self._handles: list[Any] = []
        self.session = CaptureSession(self._report_error)
        self.watched: list[WatchedModule] = []
        self._adapters: list[_Adapter] = []
        self._attach(find_recurrent(model))
        for opt in self.optimizers:
            self._handles.append(opt.register_step_pre_hook(self._on_optimizer_pre_step))
            self._handles.append(opt.register_step_post_hook(self._on_optimizer_post_step))
        self.session.begin_step(probe=self._is_probe_step(0))

    # ------------------------------------------------------------------ public API
    def step(self, loss: Any = None) -> None:
        """Feed the loss of the step that just ended; without an optimizer, end the step.

        `loss` may be a tensor (read back asynchronously, never synchronised) or a float.
        A loss fed when no `optimizer.step()` ran since the previous `step(loss)` belongs to a
        skipped update (GradScaler found Inf): it is dropped, so that it does not stand for the
        next step's loss.
        """
        if self._closed:
            return
        try:
            if not self.optimizers:
                self._end_step(loss)
                return
            if not self._updated_since_loss and not self.external_steps:
                self._pending_loss = None
                self._drain()
                return
            self._updated_since_loss = False
            waiting = self._pending[-1] if self._pending else None
            if waiting is not None and not waiting.has_loss:
                self._attach_loss(waiting, loss)
            else:
                self._pending_loss = loss
            self._drain()
        except Exception as exc:
            self._report_error("step", exc)

    def before_update(self) -> None:
        """Read this step's gradients now and run the clip/skip actions; the step's end uses this read.

        For drivers whose optimizer hooks fire at the wrong moment or not at all: call it after
        backward and before the parameter update (Lightning's `on_before_optimizer_step`, or
        `gradwatch run` after each backward of a script that updates parameters by hand).
        """
        if self._closed:
            return
        self._grad_stats = None
        self._on_optimizer_pre_step(None, (), {})

    def end_step(self, loss: Any = None) -> None:
        """End the step now, with or without optimizers (for drivers; see `external_steps`)."""
        if self._closed:
            return
        try:
            self._end_step(loss)
        except Exception as exc:
            self._report_error("end_step", exc)

    def add_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Also end steps on `optimizer.step()` (for drivers that meet optimizers after `watch`)."""
        if self._closed or any(o is optimizer for o in self.optimizers):
            return
        self.optimizers.extend(as_optimizer_list(optimizer))
        self._handles.append(optimizer.register_step_pre_hook(self._on_optimizer_pre_step))
        self._handles.append(optimizer.register_step_post_hook(self._on_optimizer_post_step))

    @property
    def detectors(self) -> Any:
        """The detector suite (`update`, `reset`, `summary()`), or None."""
        return self._detectors

    @property
    def steps(self) -> int:
        """Number of finished steps."""
        return self._step

    def flush(self) -> None:
        """Wait for every finished step's numbers and run detectors and sinks on them (may sync)."""
        self._drain(force=True)

    def close(self) -> None:
        """Flush, remove every hook and patch, and let sinks print their summaries. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            for adapter in self._adapters:
                adapter.remove()
            for handle in self._handles:
                handle.remove()
            self._adapters.clear()
            self._handles.clear()
            self.params.snapshot = None
            for sink in self._sinks:
                self._call(f"sink {type(sink).__name__}", sink.close, self)
            # A closed monitor is kept for its records only: let go of the model and its tensors.
            self.model = None  # type: ignore[assignment]
            self.optimizers, self.watched, self._actions = [], [], None
            self.params = ParameterMap(None, [])  # type: ignore[arg-type]

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ which modules are watched
    def _attach(self, found: list[WatchedModule]) -> None:
        """Install adapters on `found` (replacing the current set) and rebuild the parameter map."""
        for w in found:
            existing = installed_adapter(w.module)
            if existing is not None and existing.session is not self.session:
                raise GradwatchError(
                    f"module '{w.name}' is already watched by another gradwatch monitor; "
                    "close() that monitor first (watching the same model twice is not supported)."
                )
        kept = {id(a.watched.module): a for a in self._adapters}
        adapters = []
        for w in found:
            adapter = kept.pop(id(w.module), None)
            if adapter is None or adapter.watched.name != w.name:
                if adapter is not None:
                    adapter.remove()
                adapter = ADAPTERS[w.kind](w, self.session)
                adapter.install()
            adapters.append(adapter)
        for gone in kept.values():
            gone.remove()
        self.watched, self._adapters = found, adapters
        self._modules = [
            ModuleInfo(w.name, type(w.module).__name__, w.num_layers, getattr(w.module, "nonlinearity", "") == "relu")
            for w in found
        ]
        self._map_parameters()

    def _map_parameters(self) -> None:
        """(Re)build the parameter map of the watched modules, saying once what it cannot attribute."""
        self.params = ParameterMap(self.model, self.watched)
        self.params.take_snapshot()
        if self.params.unattributed:
            names = ", ".join(self.params.unattributed)
            self.session.tell_once(f"unattributed:{names}", (
                f"parameters {names} of a watched recurrent module belong to no layer (not weight_*/bias_*_l<k> "
                "or a reparametrisation of one): they count in the model's total gradient norm but in no "
                "layer's statistics."))
        for name, first in self.params.shared:
            self.session.tell_once(f"shared:{name}", (
                f"parameter {name} is shared with {first}: its gradient (the sum over both uses) and its "
                f"update count toward {first} only."))

    def _refresh_modules(self) -> None:
        """Pick up recurrent modules created (or removed) after `watch()`; runs on probe steps."""
        try:
            found = find_recurrent(self.model)
        except GradwatchError:
            found = []
        same = [(w.name, id(w.module)) for w in found] == [(w.name, id(w.module)) for w in self.watched]
        if not same:
            self._attach(found)

    # ------------------------------------------------------------------ step boundaries
    def _is_probe_step(self, step: int) -> bool:
        return step % self.every == 0

    def _on_optimizer_pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.external_steps and optimizer is not None:
            return  # the driver calls before_update() (optimizer=None) at the right moment
        if self._grad_stats is not None:
            return  # a second optimizer in the same step: gradients were already read
        closure = args[1] if len(args) > 1 else (kwargs or {}).get("closure")  # args[0] is the optimizer
        if optimizer is not None and closure is not None:
            # LBFGS & co. recompute gradients inside step(): read them when it returns; each closure
            # call is a full evaluation of the model, so the step's record keeps the last one's
            return _restarting_each_evaluation(args, kwargs, closure, self.session)
        try:
            if self._actions is not None:
                self._actions.before_read(self)  # e.g. GradScaler: unscale before measuring
            self._grad_stats = self._read_grads()
            if self._actions is not None:
                self._grad_stats["action"] = self._actions.before_step(self)
        except Exception as exc:
            self._report_error("optimizer pre-step", exc)

    def _on_optimizer_post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self.external_steps:
            return
        self._optimizer_steps += 1
        if self._optimizer_steps < len(self.optimizers):
            return
        try:
            self._updated_since_loss = True
            self._end_step(self._pending_loss)
            self._pending_loss = None
        except Exception as exc:
            self._report_error("optimizer post-step", exc)

    def _read_grads(self) -> dict:
        if not self.params.is_current():
            self._map_parameters()  # load_state_dict(assign=True) & co. replaced the parameters
        gsq, has_grad, total = self.params.grad_sumsq()
        outside_names, outside_wsq = self.params.outside_weight_sumsq()  # before the update, as the snapshot
        return {"gsq": gsq, "has_grad": has_grad, "total": total, "outside": (outside_names, outside_wsq)}

    def _end_step(self, loss: Any = None) -> None:
        grads = self._grad_stats if self._grad_stats is not None else self._read_grads()
        self._grad_stats, self._optimizer_steps = None, 0
        weight, update = self.params.weight_and_update_sumsq()
        scalars: dict = {("wsq",): weight, ("usq",): update}
        if grads["gsq"] is not None:
            scalars[("gsq",)] = grads["gsq"]
        if grads["total"] is not None:
            scalars[("total",)] = grads["total"]
        outside_names, outside_wsq = grads["outside"]
        if outside_wsq is not None:
            scalars[("outside_wsq",)] = outside_wsq
        action = grads.get("action") or {}
        if "clip" in action:
            scalars[("clip",)] = action["clip"]
        if self.session.eval_forwards and not self.session.forwards and any(grads["has_grad"]):
            self.session.tell_once("eval", (
                "this step trained with the watched modules in eval mode (model.eval()): gradwatch measures "
                "per-timestep and activation statistics only in train mode, so that validation forwards run "
                "with gradients on are not mixed into the training step; parameter statistics are unaffected."))
        probed = self.session.probing
        acc = self.session.begin_step(probe=self._is_probe_step(self._step + 1))
        flat, layout = acc.pack(scalars)
        readback: Any = None
        if flat is not None and self.reducer is not None:
            readback, layout = self.reducer.start(flat, layout, self._modules)
        elif flat is not None:
            readback = start_readback(flat)
        pending = PendingStep(
            step=self._step,
            layout=layout,
            groups=self.params.groups,
            has_grad=grads["has_grad"],
            probed=probed,
            modules=self._modules,
            readback=readback,
            clip_policy=action.get("policy"),
            skipped=bool(action.get("skipped", False)),
            outside_params=tuple(outside_names),
        )
        if loss is not None:
            self._attach_loss(pending, loss)
        self._pending.append(pending)
        self._step += 1
        if self._is_probe_step(self._step):
            self._refresh_modules()
        self._drain()

    def _attach_loss(self, pending: PendingStep, loss: Any) -> None:
        pending.has_loss = loss is not None
        if isinstance(loss, torch.Tensor):
            value = loss.detach().reshape(-1)[:1].float()
            pending.loss_readback = self.reducer.start_loss(value) if self.reducer else start_readback(value)
        elif loss is not None:
            pending.loss = float(loss)

    # ------------------------------------------------------------------ read-back and fan-out
    def _ready(self, pending: PendingStep, is_last: bool, force: bool) -> bool:
        if force:
            return True
        if self.optimizers and not pending.has_loss and is_last:
            return False  # its loss may still come through step(loss); the next step end releases it
        for rb in (pending.readback, pending.loss_readback):
            if isinstance(rb, PendingReadback) and not rb.ready():
                return False
        return True

    def _drain(self, force: bool = False) -> None:
        while self._pending and self._ready(self._pending[0], len(self._pending) == 1, force):
            pending = self._pending.popleft()
            flat = pending.readback.values() if isinstance(pending.readback, PendingReadback) else []
            loss = pending.loss
            if isinstance(pending.loss_readback, PendingReadback):
                loss = pending.loss_readback.values()[0]
            stats = build_step_stats(pending, flat, loss)
            self._publish(stats)

    def _publish(self, stats: StepStats) -> None:
        self.history.append(stats)
        new_alerts: list[Alert] = []
        if self._detectors is not None and "detectors" not in self._disabled:
            found = self._call("detectors", self._detectors.update, stats)
            new_alerts = list(found or [])
        self.alerts.extend(new_alerts)
        for sink in self._sinks:
            self._call(f"sink {type(sink).__name__}", sink.on_step, stats, new_alerts)

    # ------------------------------------------------------------------ fault isolation
    def _call(self, where: str, fn: Any, *args: Any) -> Any:
        if where in self._disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            self._report_error(where, exc)
            self._disabled.add(where)
            return None

    def _report_error(self, where: str, exc: BaseException) -> None:
        """An internal failure is reported once and that part disabled; training goes on."""
        if self.strict:
            raise exc
        key = f"reported:{where}"
        if key not in self._disabled:
            self._disabled.add(key)
            log.warning("gradwatch: %s failed (%s: %s); that part is disabled, training continues.",
                        where, type(exc).__name__, exc)


def _restarting_each_evaluation(args: Any, kwargs: Any, closure: Any, session: CaptureSession) -> Any:
    """The optimizer's (args, kwargs) with `closure` wrapped to call `session.new_evaluation()` first."""
    def evaluation() -> Any:
        session.new_evaluation()
        return closure()

    if len(args) > 1:
        return (args[0], evaluation, *args[2:]), kwargs
    return args, {**kwargs, "closure": evaluation}


def as_optimizer_list(optimizer: Any) -> list[torch.optim.Optimizer]:
    """Normalise `watch(optimizer=...)`: None, one optimizer, or a sequence of them."""
    if optimizer is None:
        return []
    items: Iterable[Any] = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
    result = []
    for opt in items:
        if not isinstance(opt, torch.optim.Optimizer):
            raise GradwatchError(
                f"gradwatch.watch(optimizer=...) expects a torch.optim.Optimizer (or a list of them), "
                f"got {type(opt).__name__}. Pass the optimizer whose step() updates the model, or None "
                "and call monitor.step(loss) after your manual update."
            )
        result.append(opt)
    return result
