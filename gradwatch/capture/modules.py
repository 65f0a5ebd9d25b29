"""Which modules gradwatch watches, and how their parameters map to layers and directions.

    >>> find_recurrent(model)
    [('encoder.lstm', LSTM(32, 64, num_layers=2)), ('decoder.cell', GRUCell(64, 64))]

Dispatch is one table from module class to adapter kind: supporting a new recurrent module
is one entry here plus its forward adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import GradwatchError

__all__ = ["RECURRENT_KINDS", "WatchedModule", "find_recurrent", "unwrap_model", "layer_of_parameter"]

RECURRENT_KINDS: dict[type[nn.Module], str] = {
    nn.RNN: "stack",
    nn.LSTM: "stack",
    nn.GRU: "stack",
    nn.RNNCell: "cell",
    nn.LSTMCell: "cell",
    nn.GRUCell: "cell",
}
"""Supported module classes (and their subclasses) and the adapter kind that captures them."""

_PARAM_NAME = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")
_REPARAMETRISED = (
    re.compile(r"^parametrizations\.(\w+)\.original\d*$"),  # torch.nn.utils.parametrize (weight_norm, ...)
    re.compile(r"^(\w+)_(?:orig|g|v|raw)$"),  # prune's _orig, legacy weight_norm's _g/_v, AWD-LSTM WeightDrop's _raw
)


@dataclass
class WatchedModule:
    """A recurrent module found in the model."""

    name: str
    module: nn.Module
    base: type[nn.Module]
    kind: str

    @property
    def num_layers(self) -> int:
        return int(getattr(self.module, "num_layers", 1))

    @property
    def num_directions(self) -> int:
        return 2 if getattr(self.module, "bidirectional", False) else 1

    @property
    def replayable(self) -> bool:
        """True when the module uses the stock forward, so a layer-by-layer replay is exact."""
        return self.kind == "stack" and type(self.module).forward is self.base.forward


def _base_class(module: nn.Module) -> type[nn.Module] | None:
    for cls in type(module).__mro__:
        if cls in RECURRENT_KINDS:
            return cls
    return None


def unwrap_model(model: object) -> nn.Module:
    """Return the module to watch: DDP/DataParallel and torch.compile wrappers are unwrapped."""
    if isinstance(model, torch.jit.ScriptModule):
        raise GradwatchError(
            f"gradwatch.watch got a TorchScript module ({type(model).__name__}); TorchScript runs outside "
            "Python, so hooks cannot see its recurrent layers. Watch the eager nn.Module instead "
            "(and script it only for deployment)."
        )
    if not isinstance(model, nn.Module):
        raise GradwatchError(
            f"gradwatch.watch expects a torch.nn.Module, got {type(model).__name__}. "
            "Pass the model that contains your nn.RNN/LSTM/GRU (or *Cell) modules."
        )
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
            continue
        wrapped = getattr(model, "module", None)  # DistributedDataParallel, DataParallel
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) and isinstance(wrapped, nn.Module):
            model = wrapped
            continue
        return model


def find_recurrent(model: nn.Module) -> list[WatchedModule]:
    """Every supported recurrent module in `model`, in `named_modules()` order."""
    found = []
    for name, module in model.named_modules():
        base = _base_class(module)
        if base is not None:
            found.append(WatchedModule(name, module, base, RECURRENT_KINDS[base]))
    if not found:
        kinds = ", ".join(c.__name__ for c in RECURRENT_KINDS)
        raise GradwatchError(
            f"gradwatch found no recurrent module in {type(model).__name__}; it watches {kinds} "
            "(and their subclasses). Pass the model that contains them."
        )
    return found


def layer_of_parameter(watched: WatchedModule, param_name: str) -> tuple[int, int] | None:
    """(layer, direction) of a parameter of a recurrent module, from its registered name; None when
    the name belongs to no layer (an extra Parameter of a subclass).

    A reparametrised weight's raw parameters (`parametrizations.weight_hh_l1.original0`,
    `weight_hh_l1_orig`, `weight_hh_l1_g`/`_v`, `weight_hh_l1_raw`) belong to that weight's layer.
    A cell is one layer: every parameter of it is layer 0.
    """
    if watched.kind == "cell":
        return 0, 0
    match = _PARAM_NAME.match(param_name)
    for pattern in _REPARAMETRISED:
        if match is not None:
            break
        wrapped = pattern.match(param_name)
        if wrapped is not None:
            match = _PARAM_NAME.match(wrapped.group(1))
    if match is None:
        return None
    return int(match.group(3)), 1 if match.group(4) else 0
