"""Helpers shared by the optimizer tests: objectives with prescribed gradients, a small late-fusion training setup,
thread counts, and snapshots of an optimizer's parameters and state (bit for bit)."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

import mimo_ext
from mimo_ext.models import LateFusionMLP


@contextlib.contextmanager
def threads(n: int):
    """Runs with ``n`` intra-op threads, then restores the count. The optimizer tests use tiny tensors, where a
    second thread only adds synchronisation (very costly on a loaded 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def linear_objective(params, grads, value: torch.Tensor) -> torch.Tensor:
    """A 0-dim float32 loss whose value is ``value`` and whose gradient with respect to ``params[i]`` is exactly
    ``grads[i]`` (None: the parameter is not reached), in the parameter's own dtype."""
    total = value.to(torch.float32)
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        term = (p * g).sum()
        total = total + (term - term.detach()).to(torch.float32)
    return total


# ---- a small late-fusion training setup


def make_model(input_dims=(5, 4), num_classes=3, dtype=torch.float32, device="cpu", seed=0) -> LateFusionMLP:
    torch.manual_seed(seed)
    return LateFusionMLP(list(input_dims), num_classes, hidden=8, feature_dim=6).to(device=device, dtype=dtype)


def make_batch(step: int, input_dims=(5, 4), num_classes=3, n=10, dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(1000 + step)
    inputs = [torch.randn(n, d, generator=generator, dtype=torch.float64).to(device, dtype) for d in input_dims]
    labels = torch.randint(0, num_classes, (n,), generator=generator).to(device)
    return inputs, labels


def objectives(model: nn.Module, inputs, labels) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The fusion loss f0 and the uni-modal losses [f_1..f_M] of a late-fusion model."""
    fused, uni = model(inputs)
    f0 = nn.functional.cross_entropy(fused, labels)
    return f0, [nn.functional.cross_entropy(z, labels) for z in uni]


def train_step(model, opt, step: int, path: str, *, gamma=1.0, mu=0.1, scaler=None, input_dims=(5, 4)) -> None:
    """One training step on batch ``step``: ``path`` "objectives" uses opt.backward(f0, fs), "single" one backward
    of mimo_loss. With a GradScaler, both go through scaler.step/update."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    inputs, labels = make_batch(step, input_dims, dtype=dtype, device=device)
    opt.zero_grad()
    f0, fs = objectives(model, inputs, labels)
    if path == "objectives":
        opt.backward(f0, fs, grad_scaler=scaler)
    else:
        loss = mimo_ext.mimo_loss(f0, fs, gamma=gamma, mu=mu)
        (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def clone_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def snapshot(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Clones of every parameter and every state tensor (step included) of ``opt``, in a fixed order."""
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            out.append(p.detach().clone())
            for name in sorted(opt.state[p]):
                value = opt.state[p][name]
                if isinstance(value, torch.Tensor):
                    out.append(value.detach().clone())
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` as integers (so NaNs and signed zeros compare exactly)."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.detach().cpu().contiguous().view(ints[t.element_size()])


def assert_bit_identical(before: list[torch.Tensor], after: list[torch.Tensor]) -> None:
    assert len(before) == len(after)
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, (i, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(bits(a), bits(b)), f"tensor {i} differs"


def assert_parameters_in_flat_buffers(opt) -> set[int]:
    """Checks that each parameter of ``opt`` lives at its offset in its bucket's flat buffer (so one launch steps
    them all), and returns the flat buffers' addresses."""
    addresses = set()
    for buckets in opt._buckets:
        for bucket in buckets:
            base = bucket.param_buffer.data_ptr()
            addresses.add(base)
            for p, offset in zip(bucket.params, bucket.offsets, strict=True):
                if p.numel():
                    assert p.data_ptr() == base + offset * p.element_size()
    return addresses
