"""`Monitor`: wires capture → stats → stream → detectors/actions → sinks for one model.

    >>> monitor = gradwatch.watch(model, optimizer)
    >>> ...train...; monitor.step(loss)
    >>> monitor.history[-1].layers[("lstm", 0)].grad_norm
    >>> monitor.close()

The monitor owns every hook it registers and removes them all in `close()`. Hooks only
record device tensors; numbers reach Python once a step's single buffer has been copied to
the host, and only then do detectors and sinks see the step.

When a step ends (the step-boundary rule):

* no optimizer: at each `monitor.step(loss)`;
* one optimizer: at the end of each `optimizer.step()` (the outermost call: a subclass whose
  `step()` calls `super().step()` is one update);
* several optimizers: when every one of them has stepped since the previous step ended, or at
  `monitor.step(loss)` if some but not all of them have (an optimizer that steps every other
  iteration, or one stepping twice per iteration, still gives one record per iteration);
* `add_optimizer(new)` with an optimizer holding parameters of a watched one replaces it.

`monitor.step(loss)` right after a step ended gives that step its loss; with no update since
the previous `monitor.step()` (GradScaler skipped `optimizer.step()`), the loss is dropped.

Fault isolation: a failing detector, sink, clipping policy or capture adapter is reported once
and switched off; a failure in the step accounting itself is reported once and stops all
measuring (every hook returns at once, the forward adapters call the plain forward). Training
goes on either way; with `strict=True` every such error is raised instead.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

import torch
from torch import nn

from .actions.base import NO_ACTION, ActionRecord
from .capture.criteria import CriterionTargets
from .capture.modules import WatchedModule, find_recurrent
from .capture.optimizer_hooks import OptimizerHooks, closure_of
from .capture.params import BeforeUpdate, ParameterMap
from .capture.probe import exact_timestep_norms
from .capture.session import CaptureSession
from .capture.stack import ADAPTERS, ForwardAdapter, installed_adapter
from .errors import GradwatchError
from .records import Alert, StepStats
from .stream.build import ModuleInfo, PendingStep, build_step_stats
from .stream.history import History
from .stream.loss import checked_loss
from .stream.readback import PendingReadback, host_loss, start_readback
from .stream.schema import StepLayout
from .stream.step_boundaries import LossRoute, Mode, StepBoundaries
from .stream.step_scalars import step_scalars

if TYPE_CHECKING:
    from .actions.base import StepActions
    from .detectors.protocol import Detectors
    from .detectors.suite import AlertSummary
    from .sinks.base import Sink
    from .stream.reducer import Reducer

__all__ = ["Monitor"]

log = logging.getLogger("gradwatch")

IDLE_STEP_CALLS = 20
"""`monitor.step()` calls in a row without any watched `optimizer.step()` before gradwatch warns
that the loop steps an optimizer it does not watch. A GradScaler skips updates only while it
lowers its scale (each skip halves it), so 20 in a row (a factor 2**-20) does not happen in
a healthy mixed-precision run."""

CHANCE_EVERY = 10
"""Steps between two computations of the chance level inferred from the criterion's targets (steps 0, 10, 20, ...,
and any step whose loss comes from another criterion than the last computed; the records in between carry the
latest): the targets are counted on every call, but the estimate (a dozen small
tensor operations, ~30 µs for 4 classes, ~0.3 ms for a 33k-word vocabulary on one CPU thread) is a level that moves
slowly once it exists."""

T = TypeVar("T")


@dataclass(frozen=True)
class GradientRead:
    """One step's gradients as measured before the update, and what the clip/skip actions did next."""

    read: BeforeUpdate
    """The parameter map's measurement (device tensors)."""
    action: ActionRecord = NO_ACTION
    """The actions' record for this step (`NO_ACTION` without actions)."""


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
        detectors: Detectors | None,
        sinks: Sequence[Sink],
        actions: StepActions | None = None,
        reducer: Reducer | None = None,
        external_steps: bool = False,
        infer_chance: bool = True,
    ) -> None:
        self.model = model
        self.every = every
        self.strict = strict
        self._history = History(history)
        self.alerts: list[Alert] = []
        """Every alert raised so far, in order."""
        self._detectors = detectors
        self._sinks = list(sinks)
        self._actions = actions
        self.reducer = reducer
        """Combines each step's statistics across processes (`gradwatch.distributed`), or None."""
        mode = Mode.DRIVER if external_steps else Mode.OPTIMIZERS if optimizers else Mode.MANUAL
        self._steps = StepBoundaries(mode)
        """Decides where each step ends (`stream.step_boundaries`)."""
        self._disabled: set[str] = set()
        self._reported: set[str] = set()
        self._measuring = True
        """False once the step accounting itself failed: every entry point returns at once."""
        self._closed = False
        self._step = 0
        self._pending: collections.deque[PendingStep] = collections.deque()
        self._gradients: GradientRead | None = None
        """The step in progress's gradients, once read before its update (None until then)."""
        self._hooks = OptimizerHooks(before=self._on_update_start, after=self._on_update_end)
        for opt in optimizers:
            self._hooks.add(opt, replace=False)  # optimizers given together are all kept
        # one process: a module's input and output need measuring only when not all finite (see
        # StepAccumulator.finite_checks); several: every rank packs the same slots for the reducer
        self.session = CaptureSession(self._report_error, finite_checks=reducer is None)
        self.watched: list[WatchedModule] = []
        self._adapters: list[ForwardAdapter] = []
        self.params: ParameterMap
        """The watched parameters, grouped by (module, layer, direction), with the update snapshot."""
        self._modules: list[ModuleInfo]
        self._attach(find_recurrent(model))
        self._criteria = CriterionTargets(self._report_error) if infer_chance else None
        """The criteria's targets, for `StepStats.chance_loss` (`capture.criteria`); None: not inferred."""
        self._chance_level: float | None = None
        """The latest inferred chance level read back, carried by the records between two computations."""
        self.session.begin_step(probe=self._is_probe_step(0))

    # ------------------------------------------------------------------ public API
    def step(self, loss: Any = None) -> None:
        """Feed the loss of the step that just ended; without an optimizer, end the step.

        `loss` is one number: a one-element tensor (read back asynchronously, never synchronised)
        or a float. Anything else is refused with one warning (a GradwatchError under
        `strict=True`) and the step is recorded without a loss. With several optimizers, a call
        made when some but not all of them have stepped ends the step (see the module docstring).
        A loss fed when no `optimizer.step()` ran since the previous `step(loss)` belongs to a
        skipped update (GradScaler found Inf): it is dropped, so that it does not stand for the
        next step's loss.
        """
        if self._closed or not self._measuring:
            return
        loss = self._checked_loss(loss)
        try:
            route = self._steps.loss_fed()
            if route is LossRoute.END_STEP:
                self._end_step(loss, loss_fed=True)
                return
            if route is LossRoute.TO_LAST_STEP:
                waiting = self._pending[-1] if self._pending else None
                if waiting is not None and not waiting.loss_fed:
                    self._attach_loss(waiting, loss)
            else:
                self._note_step_without_update()
            self._drain()
        except Exception as exc:
            self._stop_measuring("step", exc)

    def before_update(self) -> None:
        """Read this step's gradients now and run the clip/skip actions; the step's end uses this read.

        For drivers whose optimizer hooks fire at the wrong moment or not at all: call it after
        backward and before the parameter update (Lightning's `on_before_optimizer_step`, or
        `gradwatch run` after each backward of a script that updates parameters by hand).
        """
        if self._closed or not self._measuring:
            return
        self._gradients = None
        self._read_before_update()

    def record_action(self, action: ActionRecord) -> None:
        """Give the step in progress the record of clipping its driver did itself after `before_update()`
        (`gradwatch run` clipping a script that updates its parameters by hand): it becomes the
        step's `StepStats.clip`, as the monitor's own actions' record would."""
        if self._closed or not self._measuring or self._gradients is None:
            return
        self._gradients = replace(self._gradients, action=action)

    def end_step(self, loss: Any = None) -> None:
        """End the step now, with or without optimizers (for drivers: `watch(..., external_steps=True)`)."""
        if self._closed or not self._measuring:
            return
        loss = self._checked_loss(loss)
        try:
            self._end_step(loss, loss_fed=True)
        except Exception as exc:
            self._stop_measuring("end_step", exc)

    def add_optimizer(self, optimizer: Any) -> None:
        """Also end steps on `optimizer.step()`: for an optimizer created after `watch()`.

        An optimizer that holds parameters of a watched optimizer replaces it (re-created to
        switch Adam -> SGD, or to include parameters after unfreezing): the old one is no longer
        watched, and steps no longer wait for it. Adding a watched optimizer again does nothing.
        """
        if self._closed:
            return
        for opt in as_optimizer_list(optimizer):
            replaced = self._hooks.add(opt)
            self._steps.optimizer_added(replaced=[id(old) for old in replaced])
            for old in replaced:
                log.info("gradwatch: %s replaces %s (they share parameters); steps no longer wait for the old one.",
                         type(opt).__name__, type(old).__name__)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The watched optimizers (see `add_optimizer`)."""
        return list(self._hooks.optimizers)

    @property
    def history(self) -> History:
        """The most recent finished steps (at most `watch(history=...)`), oldest first; older ones went
        to the sinks. Safe to read from another thread: iteration walks a snapshot."""
        return self._history

    @property
    def detectors(self) -> Detectors | None:
        """The detector suite (`detectors.protocol.Detectors`: `update`, `summary`), or None."""
        return self._detectors

    @property
    def step_mode(self) -> Mode:
        """Who ends the steps: `Mode.MANUAL`, `Mode.OPTIMIZERS` or `Mode.DRIVER` (`stream.step_boundaries`)."""
        return self._steps.mode

    def _alert_summary(self) -> AlertSummary | None:
        """What the sinks get on close: the detector suite's `summary()`, or None without detectors."""
        return self._detectors.summary() if self._detectors is not None else None

    @property
    def steps(self) -> int:
        """Number of finished steps."""
        return self._step

    def weights_changed_since_step(self) -> bool:
        """Whether a watched parameter changed since the last step ended (True before any
        snapshot). One host-device sync per parameter: for drivers at the end of a run only."""
        return self.params.changed_since_snapshot()

    def flush(self) -> None:
        """Wait for every finished step's numbers and run detectors and sinks on them (may sync)."""
        try:
            self._drain(force=True)
        except Exception as exc:
            self._stop_measuring("flush", exc)

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
            self._hooks.close()
            self._close_criteria()
            self._adapters.clear()
            self.params.snapshot = None
            summary = self._call("detectors summary", self._alert_summary) if self._sinks else None
            for sink in self._sinks:
                self._call(f"sink {type(sink).__name__}", sink.close, summary)
            # A closed monitor is kept for its records only: let go of the model and its tensors.
            self.model = None  # type: ignore[assignment]
            self.watched, self._actions = [], None
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
        self.session.set_layout(StepLayout(self._modules))
        self._map_parameters()
        observe = getattr(self._actions, "observe_recurrent", None)
        if observe is not None:  # clip="auto": a looser update bound when every watched module is gated
            recurrent = [p for w in found for name, p in w.module.named_parameters() if name.startswith("weight_hh")]
            self._act(lambda _: observe([w.base for w in found], recurrent))

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

    def _on_update_start(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        """Before an outermost `optimizer.step(*args, **kwargs)` (a torch step pre-hook's arguments):
        the first update of a step reads the gradients. Returns None (or new `(args, kwargs)`)."""
        if not self._steps.hooks_end_steps or not self._measuring or self._closed:
            return None  # a driver calls before_update() at the right moment
        if self._gradients is not None:
            return None  # a second optimizer (or update) in the same step: gradients were already read
        closure = closure_of(args, kwargs)
        if closure is not None:
            # LBFGS & co. recompute gradients inside step(): read them when it returns; each closure
            # call is a full evaluation of the model, so the step's record keeps the last one's
            return _restarting_each_evaluation(args, kwargs, closure, self.session)
        self._read_before_update()
        return None

    def _on_update_end(self, optimizer: torch.optim.Optimizer) -> None:
        """After an outermost `optimizer.step()`: the step ends once every optimizer has stepped."""
        if not self._measuring or self._closed:
            return
        try:
            if self._steps.update_ended(id(optimizer), watched=[id(o) for o in self._hooks.optimizers]):
                self._end_step()
        except Exception as exc:
            self._stop_measuring("optimizer step hook", exc)

    def _read_before_update(self) -> None:
        """Measure the gradients about to be applied, with the clip/skip actions around the read."""
        optimizers = self.optimizers if self._actions is not None else []
        self._act(lambda actions: actions.before_read(optimizers))  # e.g. GradScaler: unscale before measuring
        try:
            read = self._read_grads()
        except Exception as exc:
            self._stop_measuring("gradient read", exc)
            return
        profiles = self._gradient_profiles()
        action = self._act(lambda actions: actions.before_step(optimizers, profiles)) if self._actions is not None else None
        self._gradients = GradientRead(read, action or NO_ACTION)

    def _gradient_profiles(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The per-timestep gradient profiles for actions that want them (auto clipping), else none;
        measuring them fails at most once (reported), and the actions then clip without them."""
        if self._actions is None or not self._actions.wants_profiles or "gradient profiles" in self._disabled:
            return []
        try:
            return self.session.accumulator.gradient_profiles()
        except Exception as exc:
            self._disabled.add("gradient profiles")
            self._report_error("gradient profiles for clip='auto'", exc, consequence="auto clips without them; training continues")
            return []

    def _act(self, call: Callable[[StepActions], T]) -> T | None:
        """`call(actions)`, or None without actions; failing actions (clipping, guard, unscaling) are
        reported once and switched off."""
        if self._actions is None:
            return None
        try:
            return call(self._actions)
        except Exception as exc:
            self._actions = None
            self._report_error("clip/skip actions", exc, consequence="no more clipping or skipping; training continues")
            return None

    def _read_grads(self) -> BeforeUpdate:
        if not self.params.is_current():
            self._map_parameters()  # load_state_dict(assign=True) & co. replaced the parameters
        return self.params.read_before_update()

    def _end_step(self, loss: Any = None, *, loss_fed: bool = False) -> None:
        grads = self._gradients if self._gradients is not None else GradientRead(self._read_grads())
        self._gradients = None
        self._steps.step_ended()
        read = grads.read
        action = grads.action
        source, chance = self._chance_estimate()
        scalars = step_scalars(read, *self.params.weight_and_update_sumsq(read.weight_sumsq), action.clip, chance)
        if self.session.eval_forwards and not self.session.forwards and any(read.has_grad):
            self.session.tell_once("eval", (
                "this step trained with the watched modules in eval mode (model.eval()): gradwatch measures "
                "per-timestep and activation statistics only in train mode, so that validation forwards run "
                "with gradients on are not mixed into the training step; parameter statistics are unaffected."))
        probed = self.session.probing
        acc = self.session.begin_step(probe=self._is_probe_step(self._step + 1))
        host: list[float] | None = [] if self.reducer is None else None
        flat, segments = acc.pack(scalars, remeasure=exact_timestep_norms, host_prefix=host)
        readback: Any = None
        if flat is not None and self.reducer is not None:
            readback, segments = self.reducer.start(flat, segments, acc.layout)
        elif flat is not None:
            readback = start_readback(flat, owned=True)
        pending = PendingStep(
            step=self._step,
            layout=acc.layout,
            segments=segments,
            groups=self.params.groups,
            has_grad=read.has_grad,
            probed=probed,
            modules=self._modules,
            readback=readback,
            clip_policy=action.policy,
            skipped=action.skipped,
            outside_params=tuple(read.outside_names),
            host_values=host or [],
            chance_source=source,
            chance_measured=chance is not None,
        )
        if loss_fed:
            self._attach_loss(pending, loss)
        self._pending.append(pending)
        self._step += 1
        if self._is_probe_step(self._step):
            self._refresh_modules()
        self._drain()

    def _note_step_without_update(self) -> None:
        """Warn once when `step()` keeps coming and no watched optimizer steps: a GradScaler skips a
        few updates in a row at most, so the loop most likely steps an optimizer gradwatch does not
        watch (re-created without `add_optimizer`), and no step ends."""
        if self._steps.calls_without_update == IDLE_STEP_CALLS:
            self._warn_once("idle", (
                f"monitor.step() was called {IDLE_STEP_CALLS} times in a row and no watched optimizer "
                f"({', '.join(type(o).__name__ for o in self.optimizers)}) stepped, so no step ended. If the loop "
                "re-created its optimizer, pass the new one to monitor.add_optimizer(new) (it replaces the old)."))

    def _checked_loss(self, loss: Any) -> Any:
        """`loss` if it is one number; otherwise None, with one warning (raised under strict=True)."""
        try:
            return checked_loss(loss)
        except GradwatchError as exc:
            if self.strict:
                raise
            self._warn_once("loss", str(exc))
            return None

    def _chance_estimate(self) -> tuple[Any, torch.Tensor | None]:
        """(weak reference to the latest criterion output, its chance estimate to pack with the step: every
        `CHANCE_EVERY` steps or when the criterion switched, else None), or (None, None) without one."""
        criteria = self._criteria
        if criteria is None:
            return None, None
        source = criteria.latest_source()
        if source is None or (self._step % CHANCE_EVERY and not criteria.switched()):
            return source, None
        return source, criteria.estimate()

    def _close_criteria(self) -> None:
        if self._criteria is not None:
            self._criteria.close()

    def _attach_loss(self, pending: PendingStep, loss: Any) -> None:
        """Give `pending` its loss (a one-element tensor, a float, or None for none); the inferred chance level
        stays with the step only when `loss` is the very tensor the criterion returned (`capture.criteria`)."""
        pending.loss_fed = True
        source = pending.chance_source
        pending.chance_claimed = isinstance(loss, torch.Tensor) and callable(source) and source() is loss
        if isinstance(loss, torch.Tensor):
            read = host_loss(loss) if self.reducer is None else None
            if read is not None:
                pending.loss = read  # a float32 CPU loss: read where the copy would be taken (same float)
                return
            value = loss.detach().reshape(1).float()
            pending.loss_readback = self.reducer.start_loss(value) if self.reducer else start_readback(value)
        elif loss is not None:
            pending.loss = float(loss)

    # ------------------------------------------------------------------ read-back and fan-out
    def _ready(self, pending: PendingStep, is_last: bool, force: bool) -> bool:
        if force:
            return True
        if is_last and self._steps.holds_last_step(pending.loss_fed):
            return False  # its loss may still come through step(loss); the next step end releases it
        for rb in (pending.readback, pending.loss_readback):
            if isinstance(rb, PendingReadback) and not rb.ready():
                return False  # on the CPU a read-back is always ready: the step is released at once
        return True

    def _drain(self, force: bool = False) -> None:
        while self._pending and self._ready(self._pending[0], len(self._pending) == 1, force):
            pending = self._pending.popleft()
            flat = pending.readback.values() if isinstance(pending.readback, PendingReadback) else []
            flat = pending.host_values + flat if pending.host_values else flat
            loss = pending.loss
            if isinstance(pending.loss_readback, PendingReadback):
                loss = pending.loss_readback.values()[0]
            stats = build_step_stats(pending, flat, loss, chance=self._chance_level)
            if pending.chance_measured:
                self._chance_level = stats.chance_loss
            self._publish(stats)

    def _publish(self, stats: StepStats) -> None:
        self._history.append(stats)
        observe_loss = getattr(self._actions, "observe_loss", None)
        if observe_loss is not None:  # the loss as feedback for clip="auto": host floats, already read back
            self._call("loss feedback for clip='auto'", observe_loss, stats.loss,
                       stats.clip.coefficient if stats.clip is not None else None)
        new_alerts: list[Alert] = []
        if self._detectors is not None and "detectors" not in self._disabled:
            found = self._call("detectors", self._detectors.update, stats)
            new_alerts = list(found or [])
        self.alerts.extend(new_alerts)
        for sink in self._sinks:
            self._call(f"sink {type(sink).__name__}", sink.on_step, stats, new_alerts)

    # ------------------------------------------------------------------ fault isolation
    def _call(self, where: str, fn: Any, *args: Any) -> Any:
        """Run a detector or sink call; one that fails is reported once and never called again."""
        if where in self._disabled:
            return None
        try:
            return fn(*args)
        except Exception as exc:
            self._disabled.add(where)
            self._report_error(where, exc)
            return None

    def _stop_measuring(self, where: str, exc: BaseException) -> None:
        """The step accounting failed: report once and stop measuring for good; training goes on."""
        self._report_error(where, exc, consequence="gradwatch stops measuring this model; training continues")
        self._measuring = False
        self.session.enabled = False  # the forward adapters now call the plain forward
        self._close_criteria()
        self._pending.clear()

    def _report_error(self, where: str, exc: BaseException, *, consequence: str = "") -> None:
        """An internal failure is reported once (re-raised under strict=True); the caller switches that part off."""
        if self.strict:
            raise exc
        if where not in self._reported:
            self._reported.add(where)
            log.warning("gradwatch: %s failed (%s: %s); %s.", where, type(exc).__name__, exc,
                        consequence or "that part is disabled, training continues")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            log.warning("gradwatch: %s", message)


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
