"""Every learning-rate scheduler of torch.optim.lr_scheduler (ReduceLROnPlateau, OneCycleLR, CyclicLR with momentum
cycling, SequentialLR, ChainedScheduler, ...) and the scheduler inputs of torch's AdamW / SGD OptimizerInfo entries
drive our optimizers as they drive torch.optim's: the same learning rates (and cycled momentum / betas), the same
parameters, the same scheduler state_dict."""

from __future__ import annotations

import pytest
import torch
from torch.optim import lr_scheduler as lrs

from python_tests.optim.test_optim_info_generic import assert_params_close, make_params, run_steps
from python_tests.optim_infos import MIMO_OPTIM_DB, TORCH_CLASS

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread for tiny tensors

STEPS = 12
# One factory (a list of schedulers built on the optimizer) per scheduler class of torch.optim.lr_scheduler.
SCHEDULERS = {
    "LambdaLR": lambda o: [lrs.LambdaLR(o, lambda e: 0.9**e)],
    "MultiplicativeLR": lambda o: [lrs.MultiplicativeLR(o, lambda e: 0.95)],
    "StepLR": lambda o: [lrs.StepLR(o, step_size=3, gamma=0.5)],
    "MultiStepLR": lambda o: [lrs.MultiStepLR(o, milestones=[2, 5, 9], gamma=0.3)],
    "ConstantLR": lambda o: [lrs.ConstantLR(o, factor=0.4, total_iters=4)],
    "LinearLR": lambda o: [lrs.LinearLR(o, start_factor=0.2, total_iters=5)],
    "ExponentialLR": lambda o: [lrs.ExponentialLR(o, gamma=0.8)],
    "PolynomialLR": lambda o: [lrs.PolynomialLR(o, total_iters=8, power=2.0)],
    "CosineAnnealingLR": lambda o: [lrs.CosineAnnealingLR(o, T_max=6, eta_min=1e-4)],
    "CosineAnnealingWarmRestarts": lambda o: [lrs.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)],
    "CyclicLR": lambda o: [lrs.CyclicLR(o, base_lr=0.001, max_lr=0.05, step_size_up=3, cycle_momentum=True)],
    "OneCycleLR": lambda o: [lrs.OneCycleLR(o, max_lr=0.05, total_steps=STEPS, cycle_momentum=True)],
    "ReduceLROnPlateau": lambda o: [lrs.ReduceLROnPlateau(o, mode="max", patience=1, factor=0.5)],
    "SequentialLR": lambda o: [
        lrs.SequentialLR(
            o, [lrs.LinearLR(o, start_factor=0.1, total_iters=3), lrs.ExponentialLR(o, gamma=0.9)], milestones=[3]
        )
    ],
    "ChainedScheduler": lambda o: [
        lrs.ChainedScheduler([lrs.ConstantLR(o, factor=0.5, total_iters=4), lrs.ExponentialLR(o, gamma=0.9)])
    ],
}
# Momentum, so that CyclicLR / OneCycleLR cycle SGD's momentum (AdamW's betas[0]).
KWARGS = {"MIMOAdamW": {"lr": 0.02, "weight_decay": 0.1}, "MIMOSGD": {"lr": 0.02, "momentum": 0.9}}
CASES = [
    pytest.param(info, factory, id=f"{info.name}-{name}")
    for info in MIMO_OPTIM_DB
    for name, factory in SCHEDULERS.items()
] + [
    pytest.param(info, lambda o, fs=factories: [f(o) for f in fs], id=f"{info.name}-torch-entry-{i}")
    for info in MIMO_OPTIM_DB
    for i, factories in enumerate(info.scheduler_inputs)
]


def momentum_of(group):
    return group["betas"][0] if "betas" in group else group.get("momentum")


@pytest.mark.parametrize("info,factory", CASES)
def test_scheduler_drives_ours_as_torchs(info, factory):
    ours_params, torch_params = make_params()
    histories, dicts = [], []
    for cls, params in ((info.optim_cls, ours_params), (TORCH_CLASS[info.optim_cls], torch_params)):
        opt = cls(params, **KWARGS[info.name])
        schedulers = factory(opt)
        history = []
        for i in range(STEPS):
            run_steps(opt, params, 1, first=i, schedulers=schedulers)
            history.append([(g["lr"], momentum_of(g)) for g in opt.param_groups])
        histories.append(history)
        dicts.append([s.state_dict() for s in schedulers])
    assert histories[0] == histories[1]
    assert_params_close(ours_params, torch_params)
    assert_same_state(dicts[0], dicts[1])


def assert_same_state(ours, theirs):
    """Equal scheduler state: the same keys and values, floats within float32 rounding (ReduceLROnPlateau keeps the
    best loss, which the two optimizers' float32 steps may round one ulp apart)."""
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert_same_state(ours[key], theirs[key])
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert_same_state(a, b)
    elif isinstance(ours, float) and not isinstance(theirs, bool):
        assert ours == pytest.approx(theirs, rel=1e-6)
    else:
        assert ours == theirs
