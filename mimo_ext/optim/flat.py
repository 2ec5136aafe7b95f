"""Flattened parameter buckets: the parameters of one param group that share a device and dtype, laid out in one
contiguous buffer, with the optimizer state and the per-objective gradients in buffers of the same layout.

The parameters become views of the flat buffer (``p.data`` is rebound), so the model keeps using the same
``Parameter`` objects and a step over the whole bucket is one kernel launch.
"""

from __future__ import annotations

import torch

__all__ = ["FlatBucket", "bucket_parameters"]


class FlatBucket:
    """Parameters of one (param group, device, dtype), flattened.

    Attributes:
        params: the parameters, in param-group order.
        offsets: start of each parameter in the flat buffers (elements).
        param_buffer: the flat parameter buffer; each parameter is a view of it.
        grad_buffers: flat gradient buffers, one per objective (index 0 is also the single-backward ``.grad``
            buffer), allocated on first use.
        touched: per parameter, whether a backward pass accumulated into it since the flags were last cleared
            (set by a post-accumulate-grad hook, on the host: no synchronisation).
        stepped: per parameter, whether it has taken part in a step.
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
                p.data = view
        # Where each parameter's view of the flat buffer lives, to notice a parameter replaced or re-shaped after
        # construction (p.data = ...): the step would update the flat buffer, which it no longer views.
        self._view_ptrs = [p.data_ptr() for p in params]
        self.view_shapes = [p.shape for p in params]
        self.grad_buffers: list[torch.Tensor] = []
        self.touched = [False] * len(params)
        # Host-side record of which parameters have taken part in a step, and whether any step ran: a parameter
        # reached for the first time after the bucket's first step gets a step count of its own for that step.
        self.stepped = [False] * len(params)
        self.launched = False
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

    def segments(self, reached: list[bool], fresh: list[bool]) -> list[tuple[int, int, bool]]:
        """Element ranges ``(start, stop, fresh)`` covering the runs of consecutive reached parameters that share
        the same ``fresh`` flag."""
        runs: list[tuple[int, int, bool]] = []
        for i, hit in enumerate(reached):
            if not hit or self.numels[i] == 0:
                continue
            start, stop = self.offsets[i], self.offsets[i] + self.numels[i]
            if runs and runs[-1][1] == start and runs[-1][2] == fresh[i]:
                runs[-1] = (runs[-1][0], stop, fresh[i])
            else:
                runs.append((start, stop, fresh[i]))
        return runs

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()


def bucket_parameters(params: list[torch.nn.Parameter]) -> list[FlatBucket]:
    """Groups parameters by (device, dtype), in first-appearance order, and flattens each group."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    return [FlatBucket(ps) for ps in groups.values()]
