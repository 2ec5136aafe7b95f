"""Multi-modal gradient balancing methods behind one interface, for a like-for-like comparison with MIMO.

Each method is a :class:`BalanceMethod`: ``method.backward(model, out, optimizer)`` runs the backward passes it
needs for one batch (``out``: a :class:`BatchOutputs`, e.g. from :func:`forward_batch`) and leaves the combined
gradient in ``.grad``; it returns the seconds spent in backward passes and in its weighting subroutine
(:class:`StepTimes`).

=============  ============================================================================================
name           method
=============  ============================================================================================
``joint``      f0 only (uni-modal heads on detached features)
``uniform``    f0 + sum_m f_m
``ogm_ge``     OGM-GE (Peng et al., CVPR 2022): f0, encoder gradients modulated by confidence, plus noise
``mgda``       MGDA (Sener & Koltun, NeurIPS 2018): min-norm combination of the M + 1 objectives' gradients
``pcgrad``     PCGrad (Yu et al., NeurIPS 2020): conflicting components projected away, then summed
``cagrad``     CAGrad (Liu et al., NeurIPS 2021): conflict-averse direction near the average gradient
``mmpareto``   MMPareto (Wei & Hu, ICML 2024): per encoder, equal or MGDA weights by conflict, norm kept, x1.5
``mimo``       MIMO: one backward of ``mimo_loss(f0, [f_m], gamma, mu)``
``mimo_fused`` MIMO on a fused :class:`mimo_ext.optim.MIMOOptimizer`: per-objective passes, blended in step()
=============  ============================================================================================

Any fusion model: a late-fusion model's uni-modal heads give f_m; any other model (early, attention fusion) gets them
by masking (:func:`mimo_ext.masked_losses`, computed in :func:`forward_batch`), and every method runs on it: the
multi-objective ones over all parameters (all shared), OGM-GE on each modality's own parameters
(:func:`~.base.modality_parameters`). Each method's docstring says what it does there.

Scale conventions (they matter at a fixed learning rate): joint, uniform, PCGrad, MMPareto (when gradients agree)
and CAGrad (``match_sum=True``, with c = 0) all reduce to a sum of objective gradients; MGDA's convex combination
does not (as in its paper and code), nor does OGM-GE's modulation (k <= 1). Every method trains each head on its
own loss; see :mod:`.base` for the shared conventions.

Your own method: subclass :class:`BalanceMethod` (``backward`` only; :func:`combine_by_gram` does the per-objective
gradients and writes the combination, given a function from the K x K Gram matrix to K coefficients) and pass the
class, an instance, a dotted path or a :class:`MethodSpec` to :func:`~mimo_ext.balance.compare` (or
``--methods pkg.mod:Class`` on the command line); :data:`METHODS` need not change.

Example:
    >>> from mimo_ext.models import LateFusionMLP
    >>> model = LateFusionMLP([5, 3], num_classes=4)
    >>> method = make_method("mgda")
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> out = forward_batch(model, [torch.randn(8, 5), torch.randn(8, 3)], torch.randint(0, 4, (8,)))
    >>> optimizer.zero_grad()
    >>> times = method.backward(model, out, optimizer)
    >>> optimizer.step()
    >>> times.backward_s >= 0 and times.weighting_s >= 0
    True
"""

from __future__ import annotations

from .base import (
    BalanceMethod,
    BatchOutputs,
    ParameterSplit,
    PhaseTimer,
    StepTimes,
    deposit_grads,
    forward_batch,
    split_parameters,
)
from .cagrad import CAGrad
from .gradients import ObjectiveGradients, combine_by_gram, objective_gradients
from .joint import Joint
from .mgda import Mgda
from .mimo import Mimo
from .mimo_fused import MimoFused
from .min_norm import min_norm_weights
from .mmpareto import MMPareto
from .ogm_ge import OgmGe
from .pcgrad import PCGrad
from .spec import MethodLike, MethodSpec, import_method
from .uniform import Uniform

__all__ = [
    "METHODS",
    "BalanceMethod",
    "BatchOutputs",
    "CAGrad",
    "Joint",
    "MMPareto",
    "MethodLike",
    "MethodSpec",
    "Mgda",
    "Mimo",
    "MimoFused",
    "ObjectiveGradients",
    "OgmGe",
    "PCGrad",
    "ParameterSplit",
    "PhaseTimer",
    "StepTimes",
    "Uniform",
    "combine_by_gram",
    "deposit_grads",
    "forward_batch",
    "import_method",
    "make_method",
    "min_norm_weights",
    "objective_gradients",
    "split_parameters",
]

METHODS: dict[str, type[BalanceMethod]] = {
    cls.name: cls for cls in (Joint, Uniform, OgmGe, Mgda, PCGrad, CAGrad, MMPareto, Mimo, MimoFused)
}


def make_method(name: str, **options) -> BalanceMethod:
    """The method registered as ``name`` (see :data:`METHODS`), built with ``options`` (its constructor's
    keyword arguments, e.g. ``make_method("ogm_ge", alpha=0.8)``).

    Raises:
        ValueError: ``name`` is not a registered method (the message lists the valid ones).
    """
    cls = METHODS.get(name)
    if cls is None:
        raise ValueError(f"unknown balancing method {name!r}; valid methods: {', '.join(METHODS)}")
    return cls(**options)
