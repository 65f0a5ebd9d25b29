"""Watch the standard criteria's targets while a monitor is attached, to infer the chance-level loss.

    >>> criteria = CriterionTargets(report_error)    # wraps F.cross_entropy / nll_loss / mse_loss / BCE-with-logits
    >>> loss = nn.CrossEntropyLoss()(model(x), y)     # (nn.CrossEntropyLoss calls F.cross_entropy)
    >>> source = criteria.latest_source()             # a weak reference to `loss`
    >>> estimate = criteria.estimate()                # that criterion's chance level: a 0-dim device tensor
    >>> criteria.close()                              # the functions are back as they were

`torch.nn.functional.cross_entropy`, `nll_loss`, `mse_loss` and `binary_cross_entropy_with_logits`
(no `pos_weight`) are replaced by wrappers that call
the original with the same arguments and return exactly what it returns; afterwards, a training
call (gradients enabled, an input that requires grad) with the default reduction (`'mean'`), no
class `weight`, no `label_smoothing` and class-index (integer) targets, or floating MSE / BCE targets
that do not require grad, adds its targets to a running estimate (`stats.chance`). Any other call
(validation under `no_grad`, `reduction='sum'`, probability targets) counts for nothing. Code that
took a reference to the function before `watch()` (`from torch.nn.functional import cross_entropy`)
is not seen.

`estimate()` gives the chance level of the criterion (the same function with the same number of
classes, or the same target shape) that made the most recent counted call, and `latest_source()` a weak
reference to that call's output: the monitor uses the estimate only for a step whose fed loss IS that
output.

Several monitors each install their own wrapper over the previous one; `close()` unlinks its own
from the chain whichever order they close in (a wrapper somebody else installed over gradwatch's
keeps calling it, and it then only passes calls through). A failure while observing is reported once
and observing stops; the criterion's own result is never touched.
"""

from __future__ import annotations

import functools
import types
import weakref
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F

from .. import torch_compat
from ..stats.chance import BinaryTargets, ClassCounts, TargetMoments

__all__ = ["CriterionTargets", "FunctionPatch", "WATCHED_CRITERIA"]

Estimator = Union[ClassCounts, TargetMoments]

WATCHED_CRITERIA = ("cross_entropy", "nll_loss", "mse_loss", "binary_cross_entropy_with_logits")
"""The functions of `torch.nn.functional` whose targets are observed."""

_PARAMETERS = {
    "cross_entropy": ("input", "target", "weight", "size_average", "ignore_index", "reduce", "reduction",
                      "label_smoothing"),
    "nll_loss": ("input", "target", "weight", "size_average", "ignore_index", "reduce", "reduction"),
    "mse_loss": ("input", "target", "size_average", "reduce", "reduction", "weight"),
    "binary_cross_entropy_with_logits": ("input", "target", "weight", "size_average", "reduce", "reduction",
                                         "pos_weight"),
}
"""Each function's positional parameters, in torch's order (to read a call's arguments without `inspect`)."""

_DEFAULTS: dict[str, Any] = {"weight": None, "size_average": None, "ignore_index": -100, "reduce": None,
                             "reduction": "mean", "label_smoothing": 0.0, "pos_weight": None}

MAX_ESTIMATORS = 64
"""Distinct criteria (function × classes or target shape) followed at most; later ones get no estimate."""

Observer = Callable[[tuple[Any, ...], dict[str, Any], Any], None]


class FunctionPatch:
    """`owner.name` replaced by a wrapper that calls the function it replaced, then `observe(args, kwargs, out)`."""

    def __init__(self, owner: Any, name: str, observe: Observer) -> None:
        self.owner, self.name = owner, name
        self.inner: Callable[..., Any] = getattr(owner, name)
        """What the wrapper calls: the function it replaced (relinked when a wrapper below it is removed)."""
        self.active = True
        depth = [0]
        patch = self
        compiling, tracing = torch_compat.compiling, torch_compat.jit_tracing

        def wrapper(*args: Any, **kwargs: Any) -> Any:  # refers to closure variables only (see below)
            depth[0] += 1
            try:
                out = patch.inner(*args, **kwargs)
            finally:
                depth[0] -= 1
            # not the inner call a __torch_function__ override makes, nor while torch.compile or torch.jit.trace
            # record (a compiled or traced criterion's targets are not counted)
            if patch.active and depth[0] == 0 and not compiling() and not tracing():
                observe(args, kwargs, out)
            return out

        self.wrapper = _with_globals_of(self.inner, wrapper)
        self.wrapper.__gradwatch_patch__ = self  # type: ignore[attr-defined]
        setattr(owner, name, self.wrapper)

    def remove(self) -> None:
        """Take the wrapper out of the chain of wrappers installed on `owner.name`. Idempotent."""
        if not self.active:
            return
        self.active = False
        function = getattr(self.owner, self.name)
        if function is self.wrapper:
            setattr(self.owner, self.name, self.inner)
            return
        while True:  # another monitor's wrapper sits above: make the one right above call our inner function
            above = getattr(function, "__gradwatch_patch__", None)
            if not isinstance(above, FunctionPatch):
                return  # a foreign wrapper calls ours: it stays, inactive (calls pass through)
            if above.inner is self.wrapper:
                above.inner = self.inner
                return
            function = above.inner


def _with_globals_of(inner: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """`wrapper` as `functools.wraps(inner)` makes it, and with `inner`'s module globals: `torch.jit.script` compiles
    the source `inspect` finds through `__wrapped__` (the original function's) and resolves its names in the
    function's globals, so a scripted module calling `F.cross_entropy` while gradwatch watches compiles the original
    (scripted code does not call back into Python: its targets are not counted)."""
    scope = getattr(inner, "__globals__", None)
    code = getattr(wrapper, "__code__", None)
    if isinstance(scope, dict) and isinstance(code, types.CodeType):
        wrapper = types.FunctionType(code, scope, wrapper.__name__, None, getattr(wrapper, "__closure__", None))
    return functools.wraps(inner)(wrapper)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...], name: str) -> Any:
    index = names.index(name) if name in names else len(args)
    if index < len(args):
        return args[index]
    return kwargs.get(name, _DEFAULTS.get(name))


class CriterionTargets:
    """The running chance estimates of one monitor's criteria (see the module docstring)."""

    def __init__(self, report_error: Callable[..., None]) -> None:
        self._report_error = report_error
        self._estimators: dict[tuple[Any, ...], Estimator] = {}
        self._latest: tuple[weakref.ref[torch.Tensor], Estimator] | None = None
        self._estimated: Estimator | None = None
        """The estimator `estimate()` last read: `switched()` tells when the latest call is another criterion's."""
        self._patches = [FunctionPatch(F, name, functools.partial(self._observe, name)) for name in WATCHED_CRITERIA]

    def latest_source(self) -> weakref.ref[torch.Tensor] | None:
        """A weak reference to the output of the most recent counted call, or None."""
        return self._latest[0] if self._latest is not None else None

    def switched(self) -> bool:
        """The most recent counted call is of another criterion than the one `estimate()` last read (or none was read)."""
        return self._latest is not None and self._latest[1] is not self._estimated

    def estimate(self) -> torch.Tensor | None:
        """The chance level of the most recent counted call's criterion from all its targets so far, or None: a
        0-dim float32 tensor on the targets' device (`NO_ESTIMATE` = -1: too few targets yet). A dozen small
        tensor operations: the monitor asks every `CHANCE_EVERY` steps, and when the criterion `switched()`."""
        if self._latest is None:
            return None
        try:
            self._estimated = self._latest[1]
            return self._estimated.chance()
        except Exception as exc:
            self._fail(exc)
            return None

    def close(self) -> None:
        """Put the criteria back (each wrapper unlinked from the chain). Idempotent."""
        for patch in self._patches:
            patch.remove()
        self._latest = None

    def _observe(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        try:
            self._count(name, args, kwargs, out)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.close()
        self._report_error("chance-level inference from the criterion's targets", exc,
                           consequence="no chance level is inferred; training continues")

    def _count(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        names = _PARAMETERS[name]
        pred, target = _argument(args, kwargs, names, "input"), _argument(args, kwargs, names, "target")
        if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor) and isinstance(pred, torch.Tensor)
                and pred.requires_grad and isinstance(target, torch.Tensor) and _plain_mean(args, kwargs, names)):
            return  # validation, another reduction, weighted or smoothed: not this estimator's loss
        if name in ("mse_loss", "binary_cross_entropy_with_logits"):
            weighted = _argument(args, kwargs, names, "pos_weight") is not None
            if target.requires_grad or not target.is_floating_point() or weighted:
                return
            shape = tuple(target.shape[1:])
            kind = TargetMoments if name == "mse_loss" else BinaryTargets
            estimator = self._estimator((name, shape, target.device), lambda: kind(shape, target.device))
            if estimator is not None:
                assert isinstance(estimator, TargetMoments)
                estimator.add(target)
        else:
            if target.is_floating_point() or target.is_complex() or pred.dim() == 0:
                return  # class-probability targets: not supported
            classes = pred.shape[1] if pred.dim() >= 2 else pred.shape[0]
            estimator = self._estimator(("classes", classes, target.device), lambda: ClassCounts(classes, target.device))
            if estimator is not None:
                assert isinstance(estimator, ClassCounts)
                estimator.add(target, int(_argument(args, kwargs, names, "ignore_index")))
        self._latest = (weakref.ref(out), estimator) if estimator is not None else None

    def _estimator(self, key: tuple[Any, ...], make: Callable[[], Estimator]) -> Estimator | None:
        found = self._estimators.get(key)
        if found is None and len(self._estimators) < MAX_ESTIMATORS:
            found = self._estimators[key] = make()
        return found


def _plain_mean(args: tuple[Any, ...], kwargs: dict[str, Any], names: tuple[str, ...]) -> bool:
    """The call averages its per-element losses unweighted: reduction 'mean', no legacy flags, no class weight,
    no label smoothing (then the loss of the input-blind predictor is the estimate)."""
    return (_argument(args, kwargs, names, "reduction") == "mean"
            and _argument(args, kwargs, names, "size_average") is None
            and _argument(args, kwargs, names, "reduce") is None
            and _argument(args, kwargs, names, "weight") is None
            and ("label_smoothing" not in names or _argument(args, kwargs, names, "label_smoothing") == 0.0))
