"""mimo_ext: fused kernels for balanced multi-modal learning with MIMO.

MIMO trains a multi-modal model on ``f0 + gamma * mu * log(sum_m exp(f_m / mu))``: the fusion loss plus a
smoothed max over the uni-modal losses, so the worst-trained modality gets the most gradient. The uni-modal losses
come from a late-fusion model's uni-modal heads, or from any fusion model by masking (:func:`masked_losses`).
"""

from ._library import load as _load

_load()

from . import optim, schedules  # noqa: E402
from .masking import masked_losses  # noqa: E402
from .objective import DEFAULT_MU, SmoothMax, mimo_loss  # noqa: E402
from .ops import blend, blend_, smooth_max  # noqa: E402
from .schedules import ConstantPenalty, IncreasingPenalty, PenaltySchedule, WarmupPenalty  # noqa: E402

__all__ = [
    "DEFAULT_MU",
    "ConstantPenalty",
    "IncreasingPenalty",
    "PenaltySchedule",
    "SmoothMax",
    "WarmupPenalty",
    "blend",
    "blend_",
    "masked_losses",
    "mimo_loss",
    "optim",
    "schedules",
    "smooth_max",
]
__version__ = "0.1.0"
