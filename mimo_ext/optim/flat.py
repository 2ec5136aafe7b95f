"""Flattened parameter buckets: the parameters of one param group that share a device and dtype, laid out in one
contiguous buffer, with the optimizer state and the per-objective gradients in buffers of the same layout.

Each parameter's ``.data`` is rebound to its slice of the flat buffer, so the model keeps using the same
``Parameter`` objects and a step over the whole bucket is one kernel launch. The slice is given a storage of its
own (a DLPack alias that keeps the flat buffer alive), not made a view: torch.save of a view writes the whole
storage it views, so a sub-module's state_dict() would have written the flat buffer of every parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.dlpack import from_dlpack, to_dlpack

from .step_counts import StepCounts

__all__ = ["FlatBucket", "bucket_parameters"]


class FlatBucket:
    """Parameters of one (param group, device, dtype), flattened.

    Attributes:
        params: the parameters, in param-group order.
        offsets: start of each parameter in the flat buffers (elements).
        param_buffer: the flat parameter buffer; each parameter is a view of it.
        grad_buffers: flat gradient buffers, one per objective (index 0 is also the single-backward ``.grad``
            buffer), allocated on first use.
        touched: per parameter, whether it holds a gradient in torch's sense (``.grad`` not None): set when a
            backward pass accumulates into it (a post-accumulate-grad hook, on the host: no synchronisation), cleared
            by ``zero_grad(set_to_none=True)``. The step updates exactly these parameters, as torch.optim does.
        state: the flat optimizer state buffers by name (``exp_avg``, ...); each parameter's state entries are views.
        steps: the per-parameter step counts (see step_counts.py).
    """

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.device = params[0].device
        self.dtype = params[0].dtype
        self.numels = [p.numel() for p in params]
        self.offsets = [0]
        for n in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.numel = sum(self.numels)
        self.param_buffer = torch.empty(self.numel, device=self.device, dtype=self.dtype)
        with torch.no_grad():
            for i, p in enumerate(params):
                view = self.view(self.param_buffer, i)
                view.copy_(p.detach())
                p.data = _alias(view)
        # Where each parameter's view of the flat buffer lives, to notice a parameter replaced or re-shaped after
        # construction (p.data = ...): the step would update the flat buffer, which it no longer views.
        self._view_ptrs = [p.data_ptr() for p in params]
        self.view_shapes = [p.shape for p in params]
        self.grad_buffers: list[torch.Tensor] = []
        self.touched = [False] * len(params)
        self.state: dict[str, torch.Tensor] = {}
        self.steps = StepCounts(len(params), self.device)
        # The in-place-write guard of the per-objective path (see MIMOOptimizer._check_grad0_unchanged): after
        # opt.backward, g0's buffer may change only by autograd accumulating into it (another loss's backward). The
        # buffer's version counter (shared by every view of it) is recorded, and the hooks count the accumulations
        # that land in it, each of which bumps the counter once; anything beyond that was written by someone else.
        self.guard_base: torch.Tensor | None = None
        self.guard_version = 0
        self.guard_accumulations = 0
        # Frozen parameters (requires_grad=False) take part in the layout but never receive a gradient.
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(params) if p.requires_grad
        ]

    def _make_hook(self, index: int):
        def mark_touched(param: torch.Tensor) -> None:
            self.touched[index] = True
            if self.guard_base is not None:
                grad = param.grad
                # A view's _base is the root buffer (Python identity is kept while the buffer lives). A .grad that
                # autograd created anew (it was None) is not in the buffer and did not bump its counter.
                if grad is not None and grad._base is self.guard_base:
                    self.guard_accumulations += 1

        return mark_touched

    def view(self, buffer: torch.Tensor, index: int) -> torch.Tensor:
        """Parameter ``index``'s slice of a flat buffer, shaped like the parameter."""
        start = self.offsets[index]
        return buffer[start : start + self.numels[index]].view(self.params[index].shape)

    def moved_view(self) -> int | None:
        """The index of the first parameter that is no longer its view of the flat buffer (its ``.data`` was replaced
        or re-shaped after construction, so the step's updates would be lost silently), or None."""
        # Whole lists compared at once: this runs before every step (about 0.1 us per parameter).
        ptrs = [p.data_ptr() for p in self.params]
        shapes = [p.shape for p in self.params]
        if ptrs == self._view_ptrs and shapes == self.view_shapes:
            return None
        return next(i for i in range(len(ptrs)) if (ptrs[i], shapes[i]) != (self._view_ptrs[i], self.view_shapes[i]))

    def new_buffer(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.zeros(self.numel, device=self.device, dtype=dtype or self.dtype)

    def grad_buffer(self, k: int) -> torch.Tensor:
        """Objective k's flat gradient buffer, allocated (zeroed) on first use."""
        while len(self.grad_buffers) <= k:
            self.grad_buffers.append(self.new_buffer())
        return self.grad_buffers[k]

    def is_grad_view(self, index: int) -> bool:
        """Whether parameter ``index``'s ``.grad`` is its slice of gradient buffer 0."""
        grad = self.params[index].grad
        if grad is None or not self.grad_buffers:
            return False
        return grad.data_ptr() == self.grad_buffers[0].data_ptr() + self.offsets[index] * grad.element_size() and (
            grad.shape == self.params[index].shape and grad.is_contiguous()
        )

    def start_guard(self) -> None:
        """Records g0's buffer version: from now on only counted autograd accumulations may change it."""
        self.guard_base = self.grad_buffers[0]
        self.guard_version = self.guard_base._version
        self.guard_accumulations = 0

    def guard_broken(self) -> bool:
        """Whether g0's buffer was written in place, other than by autograd accumulation, since start_guard."""
        if self.guard_base is None:
            return False
        return self.guard_base._version != self.guard_version + self.guard_accumulations

    def point_grads_at(self, k: int) -> None:
        """Makes every parameter's ``.grad`` its slice of gradient buffer k (backward then accumulates there)."""
        buffer = self.grad_buffer(k)
        for i, p in enumerate(self.params):
            p.grad = self.view(buffer, i)

    def bind_state(self, opt_state: dict, names: Sequence[str], *, loaded: bool) -> None:
        """Makes each parameter's entries in ``opt_state`` (the optimizer's ``state``) views of the flat state
        buffers ``names`` (allocated, zeroed, when missing) and its ``step`` its count. With loaded=True the entries
        already there (a loaded checkpoint, a copy's state) are copied in first, and the counts are set from them:
        a parameter's ``step`` when it has one, else 1 when it has other state (a torch.optim.SGD checkpoint keeps no
        count: its momentum buffer says the parameter has stepped), else 0."""
        if loaded:
            self.steps.reset([_loaded_count(opt_state.get(p, {})) for p in self.params])
        for name in names:
            buffer = self.state.get(name)
            if buffer is None:
                buffer = self.state[name] = self.new_buffer()
            for i, p in enumerate(self.params):
                view = self.view(buffer, i)
                old = opt_state.get(p, {}).get(name)
                if loaded and old is not None:
                    view.copy_(old)
                opt_state[p][name] = view
        self.publish_steps(opt_state)

    def publish_steps(self, opt_state: dict) -> None:
        """Points each parameter's ``opt_state[p]["step"]`` at its current count (after counts were split)."""
        for i, p in enumerate(self.params):
            opt_state[p]["step"] = self.steps.of(i)

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _alias(view: torch.Tensor) -> torch.Tensor:
    """A tensor over the same memory as ``view`` with a storage of its own, sized to it (see the module docstring)."""
    if view.numel() == 0:
        return view.clone()
    return from_dlpack(to_dlpack(view))


def _loaded_count(entries: dict) -> float:
    step = entries.get("step")
    if isinstance(step, torch.Tensor):
        return float(step.item())
    if step is not None:
        return float(step)
    return 1.0 if any(isinstance(v, torch.Tensor) for v in entries.values()) else 0.0


def bucket_parameters(params: list[torch.nn.Parameter]) -> list[FlatBucket]:
    """Groups parameters by (device, dtype), in first-appearance order, and flattens each group."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    return [FlatBucket(ps) for ps in groups.values()]
