"""Flattened parameter buckets: the parameters of one param group that share a device and dtype, laid out in one
contiguous buffer, with the optimizer state and the per-objective gradients in buffers of the same layout.

Each parameter's ``.data`` is rebound to its slice of the flat buffer, so the model keeps using the same
``Parameter`` objects and a step over the whole bucket is one kernel launch. The slice is given a storage of its
own (a DLPack alias that keeps the flat buffer alive), not made a view: torch.save of a view writes the whole
storage it views, so a sub-module's state_dict() would have written the flat buffer of every parameter.
"""

from __future__ import annotations

import weakref
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
        sharded: the parameters are DTensors (FSDP2's ``fully_shard``, tensor parallelism). Their storage belongs to
            their owner (FSDP2 all-gathers from it), so they are not moved: the state is flat over each rank's local
            shards (``opt.state[p]`` holds DTensors over views of it, with the parameter's mesh and placements) and
            the step runs once per local shard. ``param_buffer`` is None then.
    """

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        self.sharded = is_dtensor(params[0])
        locals_ = [p.to_local() for p in params] if self.sharded else params
        self.device = locals_[0].device
        # Complex parameters are laid out as their real view (..., 2), as torch.optim steps them: the buffers are
        # of the real dtype, and the parameter and its state entries are complex views of them.
        self.complex = params[0].is_complex()
        self.dtype = params[0].real.dtype if self.complex else params[0].dtype
        # Shapes and sizes of what this process holds (the local shards of sharded parameters), real-viewed.
        self.shapes = [(*t.shape, 2) if self.complex else t.shape for t in locals_]
        self.numels = [torch.Size(shape).numel() for shape in self.shapes]
        self.offsets = [0]
        for n in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.numel = sum(self.numels)
        self.param_buffer = None
        # Built on meta parameters (meta-init, then to_empty, as FSDP2 users do): nothing to lay out yet. The state
        # is made on meta; the optimizer lays the bucket out once the parameters have real storage (moved_view).
        self.deferred = self.device.type == "meta"
        if not self.sharded and not self.deferred:
            self.param_buffer = torch.empty(self.numel, device=self.device, dtype=self.dtype)
            with torch.no_grad():
                for i, p in enumerate(params):
                    view = self.view(self.param_buffer, i)
                    view.copy_(torch.view_as_real(p.detach()) if self.complex else p.detach())
                    p.data = torch.view_as_complex(_alias(view)) if self.complex else _alias(view)
        # Where each parameter's view of the flat buffer lives, to notice a parameter replaced or re-shaped after
        # construction (p.data = ...): the step would update the flat buffer, which it no longer views.
        self._view_ptrs = [p.data_ptr() for p in params] if not (self.sharded or self.deferred) else []
        self.view_shapes = [p.shape for p in params]
        self.grad_buffers: list[torch.Tensor] = []
        self._ones: torch.Tensor | None = None
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
        # The per-objective path's fresh gradients: pieces[k][i] is objective k's gradient of parameter i, autograd's
        # own tensor (pieces[0][i] is .grad), or None; None when the buffers are used instead (see objectives.py).
        # Their in-place-write guard: g0's versions after opt.backward and the accumulations counted since.
        self.pieces: list[list[torch.Tensor | None]] | None = None
        self.piece_versions: list[int | None] | None = None
        self.piece_accumulations: list[int] = []
        self._empty: torch.Tensor | None = None
        # Frozen parameters (requires_grad=False) take part in the layout but never receive a gradient.
        for i, p in enumerate(params):
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._make_hook(i))

    def _make_hook(self, index: int):
        # The hook stays on the parameter after the optimizer is gone: it holds the bucket weakly, so that the
        # bucket's buffers (parameters' old storage aside) are freed with the optimizer.
        bucket_ref = weakref.ref(self)

        def mark_touched(param: torch.Tensor) -> None:
            bucket = bucket_ref()
            if bucket is None:
                return
            bucket.touched[index] = True
            if bucket.piece_versions is not None and param.grad is bucket.pieces[0][index]:
                bucket.piece_accumulations[index] += 1
            if bucket.guard_base is not None:
                grad = param.grad
                # A view's _base is the root buffer (Python identity is kept while the buffer lives). A .grad that
                # autograd created anew (it was None) is not in the buffer and did not bump its counter.
                if grad is not None and grad._base is bucket.guard_base:
                    bucket.guard_accumulations += 1

        return mark_touched

    def view(self, buffer: torch.Tensor, index: int) -> torch.Tensor:
        """Parameter ``index``'s slice of a flat buffer, shaped like the parameter (like its local shard when
        sharded)."""
        start = self.offsets[index]
        return buffer[start : start + self.numels[index]].view(self.shapes[index])

    def moved_view(self) -> int | None:
        """The index of the first parameter that is no longer its view of the flat buffer (its ``.data`` was replaced
        or re-shaped after construction, so the step's updates would be lost silently), or None."""
        if self.deferred:  # built on meta: moved once a parameter (its local shard, if sharded) has real storage
            local = (p.to_local() for p in self.params) if self.sharded else self.params
            return next((i for i, t in enumerate(local) if not t.is_meta), None)
        if self.sharded:
            return None  # not moved: the parameters keep their owner's storage
        # Whole lists compared at once, not a Python loop over the parameters: this runs before every step.
        ptrs = [p.data_ptr() for p in self.params]
        shapes = [p.shape for p in self.params]
        if ptrs == self._view_ptrs and shapes == self.view_shapes:
            return None
        return next(i for i in range(len(ptrs)) if (ptrs[i], shapes[i]) != (self._view_ptrs[i], self.view_shapes[i]))

    def ones(self, dtype: torch.dtype) -> torch.Tensor:
        """``[1]`` on the bucket's device: the single path's coefficients, made once (no fill per step)."""
        if self._ones is None or self._ones.dtype != dtype:
            self._ones = torch.ones(1, device=self.device, dtype=dtype)
        return self._ones

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
        """Whether g0's buffer (or, fresh, g0's tensors) was written in place, other than by autograd accumulation,
        since start_guard (start_piece_guard)."""
        if self.piece_versions is not None:
            for i, (g, v) in enumerate(zip(self.pieces[0], self.piece_versions, strict=True)):
                if g is not None and self.params[i].grad is g and g._version != v + self.piece_accumulations[i]:
                    return True
        if self.guard_base is None:
            return False
        return self.guard_base._version != self.guard_version + self.guard_accumulations

    # ---- the per-objective path's fresh gradients (pieces)

    def start_pieces(self, num_objectives: int) -> None:
        """Before a per-objective backward call: the gradients so far, per objective. ``.grad`` is g0's (None: no
        gradient for any objective, torch's meaning, e.g. after model.zero_grad()); the others come from the last
        call (or from the flat buffers when ``.grad`` is still a view of them)."""
        if self.pieces is None or len(self.pieces) != num_objectives:
            self.pieces = [[None] * len(self.params) for _ in range(num_objectives)]
            for i in range(len(self.params)):
                if self.is_grad_view(i):
                    for k in range(1, min(num_objectives, len(self.grad_buffers))):
                        self.pieces[k][i] = self.view(self.grad_buffers[k], i)
        self.guard_base = None
        for i, p in enumerate(self.params):
            if p.grad is None:
                for pieces in self.pieces:
                    pieces[i] = None
            else:
                self.pieces[0][i] = p.grad

    def pieces_reached(self) -> list[bool]:
        """Per parameter: whether any objective has a gradient for it."""
        return [any(pieces[i] is not None for pieces in self.pieces) for i in range(len(self.params))]

    def start_piece_guard(self) -> None:
        """Records g0's versions: from now on only counted autograd accumulations may change them."""
        self.piece_versions = [None if g is None else g._version for g in self.pieces[0]]
        self.piece_accumulations = [0] * len(self.params)

    def sync_pieces(self) -> list[bool]:
        """Before the step: ``.grad`` is g0's (another loss's backward may have created it, a user may have set it
        to None); returns which parameters any objective reached."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                for pieces in self.pieces:
                    pieces[i] = None
            elif p.grad is not self.pieces[0][i]:
                self.pieces[0][i] = p.grad
        self.piece_versions = None
        return self.pieces_reached()

    def materialize_pieces(self) -> list[bool]:
        """Moves the pieces into the flat buffers (``.grad`` then views g0's) and drops them; returns the reach."""
        reached = self.sync_pieces()
        buffers = [self.grad_buffer(k) for k in range(len(self.pieces))]
        with torch.no_grad():
            staged = [
                [g.clone() if g is not None and g._base is buffers[k] else g for g in pieces]
                for k, pieces in enumerate(self.pieces)
            ]
            for k, pieces in enumerate(staged):
                buffers[k].zero_()
                for i, g in enumerate(pieces):
                    if g is not None:
                        self.view(buffers[k], i).copy_(g)
        for i, p in enumerate(self.params):
            p.grad = self.view(buffers[0], i) if reached[i] else None
        self.touched = list(reached)
        self.pieces = None
        return reached

    def empty(self) -> torch.Tensor:
        """An empty tensor of the bucket's dtype and device: "no gradient" for a piece (step_entry.h)."""
        if self._empty is None:
            self._empty = torch.empty(0, device=self.device, dtype=self.dtype)
        return self._empty

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
            if name not in self.state:
                self.state[name] = self._new_state()
            for i, p in enumerate(self.params):
                view = self.state_of(name, i).view(self.shapes[i])
                old = opt_state.get(p, {}).get(name)
                if loaded and old is not None:
                    old = self._local(old, name, i)
                    view.copy_(torch.view_as_real(old) if old.is_complex() else old)
                elif loaded:
                    view.zero_()  # the checkpoint holds no such state for it: it starts from zeros, as in torch.optim
                opt_state[p][name] = self._entry(view, i)
        self.publish_steps(opt_state)

    def _new_state(self) -> torch.Tensor | list[torch.Tensor]:
        """A zeroed state buffer: flat, or for a sharded bucket one tensor per local shard (DTensors over views of
        one storage cannot be saved or copied by torch, and the sharded step runs per shard anyway)."""
        if self.sharded:
            return [torch.zeros(n, device=self.device, dtype=self.dtype) for n in self.numels]
        return self.new_buffer()

    def state_of(self, name: str, index: int) -> torch.Tensor:
        """Parameter ``index``'s part of state buffer ``name``, 1-D."""
        if self.sharded:
            return self.state[name][index]
        start = self.offsets[index]
        return self.state[name][start : start + self.numels[index]]

    def zero_state(self, name: str) -> None:
        for buffer in self.state[name] if self.sharded else [self.state[name]]:
            buffer.zero_()

    def _entry(self, view: torch.Tensor, index: int) -> torch.Tensor:
        """What ``opt.state[p][name]`` holds: the view itself, or for a sharded parameter a DTensor over it with the
        parameter's mesh and placements (as torch.optim's state of a DTensor parameter is; DCP saves and reshards
        it)."""
        if not self.sharded:
            return torch.view_as_complex(view) if self.complex else view
        from torch.distributed.tensor import DTensor

        p = self.params[index]
        return DTensor.from_local(view, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())

    def _local(self, value: torch.Tensor, name: str, index: int) -> torch.Tensor:
        """A loaded state value as this process's part of it."""
        if not self.sharded:
            return value
        if is_dtensor(value):
            p = self.params[index]
            if value.placements != p.placements:
                value = value.redistribute(p.device_mesh, p.placements)  # a collective: every rank loads
            value = value.to_local()
        if value.shape != self.shapes[index]:
            raise ValueError(
                f"state {name!r} of a sharded parameter has local shape {tuple(value.shape)}, its shard "
                f"{tuple(self.shapes[index])}: load DTensor state with the parameter's placements (e.g. through "
                "torch.distributed.checkpoint's set_optimizer_state_dict)"
            )
        return value

    def local_param(self, index: int) -> torch.Tensor:
        """The tensor the step updates for parameter ``index``: its local shard when sharded."""
        p = self.params[index]
        return p.to_local() if self.sharded else p

    def local_grad(self, index: int) -> torch.Tensor:
        """Parameter ``index``'s ``.grad`` as this process's part of it (sharded parameters only)."""
        grad = self.params[index].grad
        if any(placement.is_partial() for placement in grad.placements):
            raise ValueError(
                f"parameter {index} of a sharded bucket has a .grad with a Partial placement ({grad.placements}): "
                "its reduction across ranks is still pending, so an element-wise step on the local shard would be "
                "wrong; reduce it first (FSDP2 does so in its backward)"
            )
        return grad.to_local()

    def publish_steps(self, opt_state: dict) -> None:
        """Points each parameter's ``opt_state[p]["step"]`` at its current count (after counts were split)."""
        for i, p in enumerate(self.params):
            opt_state[p]["step"] = self.steps.of(i)


def is_dtensor(value) -> bool:
    """Whether ``value`` is a torch.distributed DTensor (without importing torch.distributed.tensor otherwise)."""
    module = type(value).__module__
    if not module.startswith("torch.distributed"):
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


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
    """Groups parameters by (device, dtype, DTensor or not), in first-appearance order, and flattens each group."""
    groups: dict[tuple[torch.device, torch.dtype, bool], list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype, is_dtensor(p)), []).append(p)
    return [FlatBucket(ps) for ps in groups.values()]
