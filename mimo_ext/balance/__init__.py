"""Balanced multi-modal training: the balancing methods of the field behind one interface, real offline data,
:func:`compare`, which trains one model (late, early or attention fusion; classification or regression; complete
or with missing modalities) with each method under identical settings, and :func:`sweep`, which runs one method
over a grid of its options (:func:`pareto_front` picks the settings worth keeping). Any :class:`BalanceMethod` of
the user's (a class, an instance, a dotted path or a :class:`MethodSpec`) runs beside the registered ones.

The main command ``python -m mimo_ext.balance`` runs every method on mfeat (pix + fou) and AV-digits-mini.
"""

from .compare import DEFAULT_METHODS, compare
from .data import load_av_digits, load_diabetes
from .methods import (
    METHODS,
    BalanceMethod,
    BatchOutputs,
    MethodSpec,
    ObjectiveGradients,
    PhaseTimer,
    StepTimes,
    combine_by_gram,
    forward_batch,
    make_method,
    objective_gradients,
)
from .sweep import pareto_front, sweep

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "BalanceMethod",
    "BatchOutputs",
    "MethodSpec",
    "ObjectiveGradients",
    "PhaseTimer",
    "StepTimes",
    "combine_by_gram",
    "compare",
    "forward_batch",
    "load_av_digits",
    "load_diabetes",
    "make_method",
    "objective_gradients",
    "pareto_front",
    "sweep",
]
