"""Where `constant_clipping` lived before it became a detector like the others (`gradwatch.detectors.clipping`).

    >>> from gradwatch.detectors.clipping import ConstantClippingDetector, constant_clipping   # new home

Kept so that imports and `ConstantClipping(window=...)` written for gradwatch 1.0 keep working.
"""

from __future__ import annotations

from ..detectors.clipping import CLIPPED_BELOW, ConstantClippingDetector, constant_clipping
from ..detectors.config import DetectorConfig

__all__ = ["constant_clipping", "ConstantClipping", "CLIPPED_BELOW"]


class ConstantClipping(ConstantClippingDetector):
    """`ConstantClippingDetector` with its options given one by one (the 1.0 signature); the
    cooldown is the window, as it was."""

    def __init__(self, *, window: int = 100, info_share: float = 0.5, warning_share: float = 0.9,
                 hard: float = 0.5) -> None:
        super().__init__(DetectorConfig(constant_clip_window=window, constant_clip_share=info_share,
                                        constant_clip_warning_share=warning_share, constant_clip_hard=hard,
                                        constant_clip_cooldown=window))
