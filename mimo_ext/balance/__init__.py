"""Balanced multi-modal training: the balancing methods of the field behind one interface, real offline data, and
:func:`compare`, which trains one late-fusion model with each method under identical settings.

The main command ``python -m mimo_ext.balance`` runs every method on mfeat (pix + fou) and AV-digits-mini.
"""

from .compare import DEFAULT_METHODS, compare
from .data import load_av_digits
from .methods import METHODS, BalanceMethod, BatchOutputs, StepTimes, make_method

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "BalanceMethod",
    "BatchOutputs",
    "StepTimes",
    "compare",
    "load_av_digits",
    "make_method",
]
