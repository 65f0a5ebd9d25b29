"""gradwatch: see where the gradients of your recurrent network vanish or explode.

    >>> import gradwatch
    >>> monitor = gradwatch.watch(model, optimizer)
    >>> ...  # train as usual; call monitor.step(loss) after optimizer.step()
    >>> monitor.close()
"""

from .errors import GradwatchError
from .monitor import Monitor
from .records import Alert, ClipEvent, DirectionStats, LayerStats, NonFinite, Severity, StepStats
from .watch import watch

__all__ = [
    "watch",
    "Monitor",
    "StepStats",
    "LayerStats",
    "DirectionStats",
    "NonFinite",
    "ClipEvent",
    "Alert",
    "Severity",
    "GradwatchError",
]
__version__ = "0.1.0"
