"""OptimizerInfo entries for MIMOAdamW and MIMOSGD, built from torch.optim's own AdamW and SGD entries (torch's
``torch.testing._internal.common_optimizers.optim_db``, which ships in the wheel): the same configurations, error
inputs and scheduler inputs, with the flags set to what our optimizers support today.

Each entry keeps the torch.optim class it stands in for (``TORCH_CLASS``): the generic tests run every configuration
on both and compare. Configurations we do not support are listed in ``UNSUPPORTED`` with the reason; the tests skip
them visibly.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import unittest

import torch

if importlib.util.find_spec("expecttest") is None:
    # torch.testing._internal imports expecttest, a test-only package for its assertExpected helpers, which these
    # tests never call. .ci/setup installs it; the GPU machine's environment lacks it (.ci/gpu_rehearsal found this):
    # there a stand-in with unittest's TestCase lets torch's tables import, so their CUDA configurations still run.
    sys.modules["expecttest"] = types.ModuleType("expecttest")
    sys.modules["expecttest"].TestCase = unittest.TestCase

from torch.testing._internal.common_optimizers import OptimizerInfo, optim_db  # noqa: E402

from mimo_ext.optim import MIMOSGD, MIMOAdamW  # noqa: E402

def torch_info(torch_cls: type[torch.optim.Optimizer]) -> OptimizerInfo:
    return next(info for info in optim_db if info.optim_cls is torch_cls)


def _mimo_info(mimo_cls, torch_cls, *, has_capturable_arg: bool) -> OptimizerInfo:
    base = torch_info(torch_cls)
    return OptimizerInfo(
        mimo_cls,
        optim_inputs_func=base.optim_inputs_func,
        optim_error_inputs_func=base.optim_error_inputs_func,
        scheduler_inputs=base.scheduler_inputs,
        # foreach and fused are accepted and stored (the step is always one fused pass); differentiable=True is
        # refused with a ValueError (the fused step is not differentiable).
        supported_impls=("foreach", "fused"),
        not_og_supported_flags=base.not_og_supported_flags,
        # Sparse gradients and complex parameters as torch's class does (SGD steps sparse gradients, AdamW refuses
        # them; both step complex parameters as their real view): test_optim_info_generic.py checks each side by side.
        supports_sparse=base.supports_sparse,
        supports_complex=base.supports_complex,
        has_capturable_arg=has_capturable_arg,
        metadata_for_sparse=base.metadata_for_sparse,
        step_requires_closure=False,
        supports_param_groups=True,
        supports_multiple_devices=True,
        # fused=True is accepted wherever a kernel exists (every step is fused).
        supports_fused_on=("cpu", "cuda"),
    )


MIMO_OPTIM_DB = [
    _mimo_info(MIMOAdamW, torch.optim.AdamW, has_capturable_arg=True),
    _mimo_info(MIMOSGD, torch.optim.SGD, has_capturable_arg=False),
]
TORCH_CLASS = {MIMOAdamW: torch.optim.AdamW, MIMOSGD: torch.optim.SGD}

# desc of a torch configuration -> why we do not run it. Only the CUDA configurations of AdamW hold Tensor betas.
UNSUPPORTED = {
    "Tensor lr, Tensor betas, with capturable and amsgrad": "betas must be host floats (kernel scalar arguments)",
    "Tensor lr, Tensor betas, with capturable": "betas must be host floats (kernel scalar arguments)",
}


def configurations(info: OptimizerInfo, device: str = "cpu", dtype=torch.float32):
    """The info's optimizer inputs on ``device``: (desc, kwargs, reason or None when we run it)."""
    return [(i.desc, i.kwargs, UNSUPPORTED.get(i.desc)) for i in info.optim_inputs_func(device, dtype)]
