"""The base of the fused MIMO optimizers: param groups, hyperparameter checks, zero_grad, the MIMO coefficients
and the step. The subclasses (sgd.py, adamw.py) add only their hyperparameters, their state buffers and the call
of their step operator. Beside it, one job per module: flat.py (the flat buckets, which own their state and step
counts), step_counts.py (per-parameter step counts), objectives.py (the per-objective backward and clipping),
amp.py (loss scaling), checkpoint.py (state_dict and copies).

A step, per (param group, device, dtype) bucket, is one call of the algorithm's fused operator, which reads the
parameters, the state and the K gradient buffers once and writes parameters and state once.

Gradients come in one of two ways:

1. ``opt.backward(f0, [f1, ..., fM])`` runs one backward pass per objective, each into that objective's own
   gradients (autograd's fresh tensors; flat per-objective buffers only for a GradScaler, torch.distributed and
   ``opt.clip_grad_norm_``); ``opt.step()`` then blends them with ``[1, gamma * softmax(f / mu)]`` on the device,
   inside the fused step.
2. ``opt.mimo_loss(f0, [f1, ..., fM]).backward()`` (``mimo_loss`` with the optimizer's gamma and mu), or any loss's
   backward, fills the ordinary ``.grad`` as for torch.optim; ``opt.step()`` reads autograd's own ``.grad`` tensors
   (the step op's gradient "in pieces", next to the flat parameters and state) and never writes them. zero_grad sets
   ``.grad`` to None as torch.optim's does: nothing is zero-filled, and backward allocates fresh gradients.

The parameters stepped are those holding a gradient in torch's sense: ``.grad`` not None on the single path; on the
per-objective path those the passes reached (FlatBucket.touched, recorded on the host by post-accumulate-grad hooks,
so nothing is read back from the device).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist

from ..distributed import resolve_group
from ..objective import DEFAULT_MU
from ..objective import mimo_loss as _mimo_loss
from ..ops import smooth_max
from . import amp
from .arguments import check_floats, check_mimo_hyperparameters, check_torch_flags
from .checkpoint import Checkpointing
from .diagnostics import StepDiagnostics, diagnostics_from_stats
from .flat import FlatBucket, bucket_parameters
from .objectives import HostState, PendingObjectives, PerObjectivePath

__all__ = ["MIMOOptimizer", "StepDiagnostics"]


class MIMOOptimizer(PerObjectivePath, Checkpointing, torch.optim.Optimizer):
    """Base class of the fused MIMO optimizers; see the module docstring. Not used directly. The per-objective path
    (objectives.py) and checkpoints and copies (checkpoint.py) are mixins; loss scaling is in amp.py."""

    # torch.amp.GradScaler then hands over `grad_scale` and `found_inf` instead of unscaling .grad itself.
    _step_supports_amp_scaling = property(amp.step_unscales, amp.set_step_unscales)
    # torch.optim's param-group keys that a checkpoint may lack (older torch, older mimo_ext), with the value
    # torch.optim's __setstate__ gives a group that lacks them; and the keys it sets whatever was loaded.
    _torch_group_defaults: dict = {}
    _torch_group_forced: dict = {}
    # The algorithm's hyperparameters that must be host floats (lr, gamma and mu may also be one-element tensors).
    _float_hyperparameters: tuple[str, ...] = ()

    def __init__(
        self, params, defaults: dict, *, diagnostics: bool = False, sync: bool | None = None, process_group=None
    ) -> None:
        check_torch_flags(type(self).__name__, defaults)
        # Distributed: resolved once (see mimo_ext.distributed); None when there is nothing to reduce. The arguments
        # are kept for copies: a pickled copy resolves them again in the process that loads it.
        self._dist_group = resolve_group(sync, process_group)
        self._dist_args = (sync, process_group)
        self._buckets: list[list[FlatBucket]] = []
        # Written by zero_grad / backward / step, so on an object of its own: torch < 2.12's dynamo cannot trace a
        # setattr on the optimizer itself (AssertionError "... does not have an AttributeMutation mutation_type").
        self._host = HostState()
        self._lr_tensors: dict[int, tuple[float, torch.Tensor]] = {}
        self.diagnostics = bool(diagnostics)
        # Whether gamma or mu was set for this optimizer (as an argument or a param group's key): the single path
        # (a plain backward) cannot use them, so step() then says so (see _warn_unused_mimo).
        self._mimo_explicit = any(defaults.get(name) is not None for name in ("gamma", "mu"))
        for name, value in (("gamma", 1.0), ("mu", DEFAULT_MU)):
            if defaults.get(name) is None:
                defaults[name] = value
        super().__init__(params, defaults)

    @property
    def last_diagnostics(self) -> StepDiagnostics | None:
        """The :class:`StepDiagnostics` of the last step (None without ``diagnostics=True``)."""
        return self._host.last_diagnostics

    @last_diagnostics.setter
    def last_diagnostics(self, value: StepDiagnostics | None) -> None:
        self._host.last_diagnostics = value

    @property
    def _pending(self) -> PendingObjectives | None:
        return self._host.pending

    @_pending.setter
    def _pending(self, value: PendingObjectives | None) -> None:
        self._host.pending = value

    # ---- subclass interface

    def _check_group(self, group: dict) -> None:
        """Raises ValueError for a bad hyperparameter of the group: lr, gamma, mu and differentiable first, then the
        algorithm's own (_check_algorithm), then that those in _float_hyperparameters are not tensors."""
        check_mimo_hyperparameters(type(self).__name__, group)
        self._check_algorithm(group)
        check_floats(group, self._float_hyperparameters)

    def _check_algorithm(self, group: dict) -> None:
        """Raises ValueError for a bad value of one of the algorithm's own hyperparameters."""

    def _check_gradient(self, grad: torch.Tensor) -> None:
        """Raises as torch's algorithm does for a gradient it refuses (AdamW: sparse gradients)."""

    def _state_names(self, group: dict) -> tuple[str, ...]:
        """Names of the state buffers the group's options use, in the operator's order."""
        raise NotImplementedError

    def _restarts_with(self, new_state: list[str]) -> bool:
        """Whether a state buffer created after the first step makes its parameters start as on their first step
        (SGD's momentum buffer does: torch.optim starts it at the gradient)."""
        return False

    def _call_step(
        self,
        group: dict,
        param: torch.Tensor,
        states: dict[str, torch.Tensor],
        grads: list[torch.Tensor],
        coefficients: torch.Tensor,
        lr: torch.Tensor,
        step: torch.Tensor,
        grad_scale: torch.Tensor | None,
        found_inf: torch.Tensor | None,
        compute_stats: bool,
    ) -> torch.Tensor:
        raise NotImplementedError

    # ---- param groups and state

    def add_param_group(self, param_group: dict) -> None:
        if isinstance(param_group, dict) and ("gamma" in param_group or "mu" in param_group):
            self._mimo_explicit = True
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for p in group["params"]:
                if not (p.is_floating_point() or p.is_complex()):
                    raise TypeError(
                        f"{type(self).__name__}: parameters must be floating point or complex, got {p.dtype}"
                    )
                if p.is_sparse:
                    raise TypeError(f"{type(self).__name__}: sparse parameters are not supported")
            self._check_group(group)
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise
        buckets = bucket_parameters(group["params"])
        self._buckets.append(buckets)
        for bucket in buckets:
            self._bind_state(group, bucket, loaded=False)

    def _bind_state(self, group: dict, bucket: FlatBucket, *, loaded: bool, names: Sequence[str] | None = None) -> None:
        """Binds the bucket's flat state to ``self.state`` (see FlatBucket.bind_state); ``names``: the state buffers
        to bind (default: those the group's options use)."""
        bucket.bind_state(self.state, self._state_names(group) if names is None else names, loaded=loaded)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch.optim's zero_grad: every ``.grad`` is set to None (set_to_none=True, the default: the next
        backward allocates fresh gradients, and ``step`` reads autograd's own tensors, nothing is zero-filled) or
        zeroed in place (set_to_none=False: a parameter then keeps a zero gradient, and ``step`` updates it as
        torch.optim does, weight decay and momentum still moving it).

        The per-objective buffers need no zeroing here: ``opt.backward`` zeroes the slices of every parameter whose
        ``.grad`` is not its slice of g0's buffer (None after this call) before it accumulates."""
        for buckets in self._buckets:
            for bucket in buckets:
                views = [bucket.is_grad_view(i) for i in range(len(bucket.params))]
                if not set_to_none and any(views):
                    # .grad stays a view of g0's buffer: every objective's buffer keeps accumulating, so all restart.
                    for buffer in bucket.grad_buffers:
                        buffer.zero_()
                bucket.guard_base = None
                bucket.piece_versions = None
                if bucket.pieces is not None:
                    # The other objectives' fresh gradients go as .grad goes: dropped, or zeroed in place.
                    others = [g for gs in bucket.pieces[1:] for g in gs if g is not None]
                    if set_to_none or not others:
                        bucket.pieces = None
                    else:
                        torch._foreach_zero_(others)
                for i, p in enumerate(bucket.params):
                    if p.grad is None:
                        continue
                    if set_to_none:
                        p.grad = None
                    elif not views[i]:
                        if p.grad.grad_fn is not None:
                            p.grad.detach_()
                        else:
                            p.grad.requires_grad_(False)
                        p.grad.zero_()
                if set_to_none:
                    bucket.touched = [False] * len(bucket.params)
        self._host.pending = None
        self._host.objectives = None

    # ---- the per-objective path

    def _check_parameters(self) -> None:
        """Follows parameters whose ``.data`` was replaced since the buckets were built, as torch.optim (which keys
        everything on the Parameter objects) does: ``model.to(dtype or device)``, ``p.data = ...`` of the same shape,
        ``to_empty`` after building on meta. Their group is laid out again (see _relayout). A parameter re-shaped
        (its state no longer fits it) raises ValueError, as does any move between ``opt.backward`` and ``step``."""
        for g, (group, buckets) in enumerate(zip(self.param_groups, self._buckets, strict=True)):
            moved = [(bucket, bucket.moved_view()) for bucket in buckets]
            moved = [(bucket, i) for bucket, i in moved if i is not None]
            if not moved:
                continue
            for bucket, i in moved:
                p = bucket.params[i]
                if p.shape != bucket.view_shapes[i] or self._host.pending is not None:
                    j = next(j for j, q in enumerate(group["params"]) if q is p)
                    why = "re-shaped" if p.shape != bucket.view_shapes[i] else "replaced between opt.backward and step"
                    raise ValueError(
                        f"{type(self).__name__}: parameter {j} of param_groups[{g}] (shape {tuple(p.shape)}, was "
                        f"{tuple(bucket.view_shapes[i])} when it was built) is no longer a view of the "
                        f"optimizer's flat buffer: its .data was {why} after the optimizer was built"
                    )
            self._relayout(g)

    def _relayout(self, g: int) -> None:
        """Lays param group ``g`` out again from its parameters' current tensors (their devices and dtypes), carrying
        each parameter's state and step count over (converted; a state still on meta, never stepped, starts at
        zeros): the step then goes on as if the optimizer had been built on the moved model."""
        group = self.param_groups[g]
        for p in group["params"]:
            entries = self.state.get(p)
            if entries and any(isinstance(v, torch.Tensor) and v.is_meta for v in entries.values()):
                del self.state[p]  # built on meta and never stepped: nothing to carry over
        buckets = bucket_parameters(group["params"])
        self._buckets[g] = buckets
        self._lr_tensors.clear()
        for bucket in buckets:
            self._bind_state(group, bucket, loaded=True, names=self._carried_state(group))

    def _carried_state(self, group: dict) -> tuple[str, ...]:
        """The state buffers to bind after a re-layout: those the group's options use, and any other it holds."""
        names = list(self._state_names(group))
        for p in group["params"]:
            names += [n for n, v in self.state.get(p, {}).items() if n not in names and n != "step"
                      and isinstance(v, torch.Tensor)]
        return tuple(names)

    # ---- the step

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step (see the module docstring for where the gradients come from).

        Args:
            closure: re-evaluates the model and returns the loss (run with gradients enabled), as in torch.optim.
        """
        # Everything is validated before anything is written: a bad value set in a param group after construction
        # (e.g. an lr scheduler's NaN) raises here, never from a later group's op after earlier groups were updated.
        self._check_parameters()
        for group in self.param_groups:
            self._check_group(group)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._check_gradient(p.grad)
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if not isinstance(found_inf, torch.Tensor):
            found_inf = None  # GradScaler passes 0 when no .grad was there to check
        self._check_grad0_unchanged("step")
        pending, self._host.pending = self._host.pending, None
        if pending is None:
            self._warn_unused_mimo()
        self._host.mimo_loss_made = False
        stats_sum: torch.Tensor | None = None
        weights_report: torch.Tensor | None = None
        for group, buckets in zip(self.param_groups, self._buckets, strict=True):
            weights = self._weights(group, pending) if pending is not None else None
            if weights_report is None:
                weights_report = weights
            for bucket in buckets:
                stats = self._step_bucket(group, bucket, pending, weights, grad_scale, found_inf)
                if stats is not None:
                    stats = stats.to(torch.float64)
                    if stats_sum is None:
                        stats_sum = stats
                    else:
                        # non_blocking only towards a GPU: a GPU-to-CPU copy would be read before it landed.
                        to = stats_sum.device
                        stats_sum = stats_sum + stats.to(to, non_blocking=to.type == "cuda")
        last = diagnostics_from_stats(stats_sum, weights_report) if stats_sum is not None else None
        self._host.last_diagnostics = last
        return loss

    def mimo_loss(
        self, f0: torch.Tensor, uni_losses: Sequence[torch.Tensor] | torch.Tensor, **kwargs
    ) -> torch.Tensor:
        """:func:`mimo_ext.mimo_loss` with this optimizer's ``gamma`` and ``mu`` (those of its param groups, which
        must agree; one-element tensors too, e.g. written by a schedule): the single path's loss, with the one
        source of gamma and mu that ``opt.backward`` uses. ``kwargs``: mimo_loss's others (``sync``,
        ``process_group``)."""
        gamma, mu = self._single_path_gamma_mu()
        self._host.mimo_loss_made = True
        if not isinstance(mu, torch.Tensor) and not isinstance(gamma, torch.Tensor):
            return _mimo_loss(f0, uni_losses, gamma=float(gamma), mu=float(mu), **kwargs)
        # Tensor hyperparameters stay on the device: mu * S_1(f / mu) = S_mu(f), and gamma multiplies it.
        uni = torch.stack(list(uni_losses)) if not isinstance(uni_losses, torch.Tensor) else uni_losses
        scaled_mu = mu.to(uni.device, uni.dtype).reshape(()) if isinstance(mu, torch.Tensor) else float(mu)
        smooth = _mimo_loss(f0.new_zeros(()), uni / scaled_mu, gamma=1.0, mu=1.0, **kwargs) * scaled_mu
        return f0 + (gamma.to(f0.device, f0.dtype).reshape(()) if isinstance(gamma, torch.Tensor) else gamma) * smooth

    def _single_path_gamma_mu(self):
        first = self.param_groups[0]
        for g, group in enumerate(self.param_groups[1:], start=1):
            for name in ("gamma", "mu"):
                if group[name] is not first[name] and not _same_value(group[name], first[name]):
                    raise ValueError(
                        f"{type(self).__name__}.mimo_loss: param_groups[{g}] has {name}={group[name]!r} but "
                        f"param_groups[0] has {first[name]!r}: one loss has one {name}; per-group values apply on "
                        "the per-objective path (opt.backward(f0, uni_losses)) only"
                    )
        return first["gamma"], first["mu"]

    def _warn_unused_mimo(self) -> None:
        """On the single path the gradient's gamma and mu are those of the loss (``mimo_loss(f0, f, gamma, mu)``),
        which the optimizer cannot see: when gamma or mu were set on the optimizer and the loss did not come from
        ``opt.mimo_loss``, they may have been ignored; said once per optimizer."""
        host = self._host
        if host.mimo_loss_made or host.warned_unused_mimo or not getattr(self, "_mimo_explicit", False):
            return
        host.warned_unused_mimo = True
        values = ", ".join(f"{n}={self.param_groups[0][n]!r}" for n in ("gamma", "mu"))
        warnings.warn(
            f"{type(self).__name__} was given gamma/mu ({values}), but this step's gradient came from a plain "
            "backward (not opt.backward(f0, uni_losses)), whose loss sets its own gamma and mu: the optimizer's are "
            "not used. Make the loss with opt.mimo_loss(f0, uni_losses) (the optimizer's gamma and mu), or leave "
            "gamma/mu off the optimizer",
            UserWarning,
            stacklevel=5,  # _warn_unused_mimo, step, no_grad, torch.optim's step hook wrapper, the caller
        )

    def _weights(self, group: dict, pending: PendingObjectives) -> torch.Tensor:
        # In float64 (M values, on the device): float64 parameters then get float64-accurate coefficients even from
        # float32 losses, and the cast to each bucket's math dtype rounds once.
        mu = group["mu"]
        losses = pending.uni_losses.double()
        if isinstance(mu, torch.Tensor):
            # softmax(f / mu) = smooth_max(f / mu, 1): the temperature stays on the device.
            return smooth_max(losses / mu.to(losses.device, torch.float64).reshape(()), 1.0)[1]
        return smooth_max(losses, float(mu))[1]

    def _coefficients(self, group, bucket, pending, weights, grad_scale) -> torch.Tensor:
        """The step's ``[K]`` coefficients on the per-objective path: ``[1, gamma * w_1, ..., gamma * w_M]``, times
        each buffer's unscale factor (amp.py) and the factor of ``clip_grad_norm_``; in the bucket's math dtype."""
        device = bucket.device
        dtype = _math_dtype(bucket.dtype)
        gamma = group["gamma"]
        if isinstance(gamma, torch.Tensor):
            gamma = gamma.to(device, dtype).reshape(())
        tail = weights.to(device, dtype, non_blocking=device.type == "cuda") * gamma
        coefficients = torch.cat([torch.ones(1, device=device, dtype=dtype), tail.to(dtype)])
        factors = amp.unscale_factors(pending.num_objectives, grad_scale, pending.loss_scale, device, dtype)
        if factors is not None:
            coefficients = coefficients * factors
        if pending.clip is not None:
            # clip_grad_norm_'s factor scales every objective alike: the step applies the clipped blended gradient.
            coefficients = coefficients * pending.clip.to(device, dtype, non_blocking=device.type == "cuda")
        return coefficients

    @staticmethod
    def _readable(bucket: FlatBucket, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Gradients as the kernel reads them, never written: autograd's own tensors when dense, contiguous and of
        the bucket's dtype, else converted copies (a sparse gradient made dense: the same values; the algorithm
        refuses sparse gradients first where torch's does; a complex one as its real view)."""
        out: list[torch.Tensor | None] = []
        for g in grads:
            if g is not None:
                if g.is_sparse:
                    g = g.to_dense()
                if g.is_complex():
                    g = torch.view_as_real(g)
                if g.dtype != bucket.dtype or not g.is_contiguous():
                    g = g.to(bucket.dtype).contiguous()
            out.append(g)
        return out

    def _lr_tensor(self, group: dict, bucket: FlatBucket) -> torch.Tensor:
        """lr as a one-element tensor in the bucket's math dtype on its device; a float lr is written into a cached
        tensor only when it changes (one small fill, no synchronisation)."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            return lr.to(bucket.device)
        cached = self._lr_tensors.get(id(bucket))
        if cached is None or cached[0] != lr:
            tensor = (
                cached[1]
                if cached is not None
                else torch.empty((), device=bucket.device, dtype=_math_dtype(bucket.dtype))
            )
            tensor.fill_(lr)
            self._lr_tensors[id(bucket)] = (lr, tensor)
            return tensor
        return cached[1]

    def _step_bucket(self, group, bucket, pending, weights, grad_scale, found_inf) -> torch.Tensor | None:
        dtype = _math_dtype(bucket.dtype)
        if grad_scale is not None:
            grad_scale = grad_scale.to(bucket.device)
        fresh = pending is not None and pending.fresh
        if fresh and bucket.pieces is not None:
            # Autograd's own tensors, per objective (objectives.py): the op reads them in pieces, K per run.
            reached = bucket.sync_pieces()
            pieces = [self._readable(bucket, gs) for gs in bucket.pieces]
            grads = None
            coefficients = self._coefficients(group, bucket, pending, weights, grad_scale)
            factors = amp.unscale_factors(len(pieces), grad_scale, pending.loss_scale, bucket.device, dtype)
        elif pending is not None and not fresh:
            # Another loss's backward after opt.backward may have given a parameter a .grad of its own (it was
            # None): it is g0's too. Accumulations into the views are in the buffer already.
            self._fold_grad0(bucket)
            bucket.guard_base = None
            grads = bucket.grad_buffers[: pending.num_objectives]
            reached = [r or t for r, t in zip(pending.reached[id(bucket)], bucket.touched, strict=True)]
            coefficients = self._coefficients(group, bucket, pending, weights, grad_scale)
            factors = amp.unscale_factors(len(grads), grad_scale, pending.loss_scale, bucket.device, dtype)
            if self._dist_group is not None:
                grads, coefficients = self._reduce_blended(grads, coefficients)
                factors = None if factors is None else factors[:1]
        elif bucket.sharded:
            grads, reached = None, [p.grad is not None for p in bucket.params]  # torch.optim's rule
            factors = amp.unscale_factors(1, grad_scale, None, bucket.device, dtype)
            coefficients = factors if factors is not None else bucket.ones(dtype)
        else:
            pieces = [self._readable(bucket, [p.grad for p in bucket.params])]
            grads, reached = None, [g is not None for g in pieces[0]]
            factors = amp.unscale_factors(1, grad_scale, None, bucket.device, dtype)
            coefficients = factors if factors is not None else bucket.ones(dtype)
        names = self._state_names(group)
        new = [name for name in names if name not in bucket.state]
        if new:
            self._bind_state(group, bucket, loaded=False)  # an option turned on after construction
            if self._restarts_with(new):
                _refuse_under_capture(bucket)
                bucket.steps.reset()
                bucket.publish_steps(self.state)
        # Per-parameter counts, as torch.optim keeps them (see step_counts.py): one launch per run of consecutive
        # reached parameters that share a count.
        if bucket.steps.partly_reached(reached):
            _refuse_under_capture(bucket)
            bucket.steps.split(reached)
            bucket.steps.prune()
            bucket.publish_steps(self.state)
        if found_inf is not None:
            found_inf = found_inf.to(bucket.device)
        for count in bucket.steps.without_elements(reached, bucket.numels):
            count.add_(1.0 if found_inf is None else (found_inf.reshape(()) == 0).float())
        # A sharded bucket's parameters and gradients are separate local shards: one launch per parameter.
        runs = bucket.steps.runs(reached, bucket.offsets, bucket.numels, merge=not bucket.sharded)
        if not runs:
            return None
        lr = self._lr_tensor(group, bucket)
        total = None
        index_at = (
            {bucket.offsets[i]: i for i in range(len(bucket.params)) if bucket.numels[i]} if grads is None else {}
        )
        for start, stop, step in runs:
            if bucket.sharded:
                i = index_at[start]
                param, run_grads = bucket.local_param(i).view(-1), [bucket.local_grad(i).reshape(-1)]
                states = {name: bucket.state_of(name, i) for name in names}
            elif grads is None:
                # The parameters' own gradients, in order, tile the run (step_entry.h's pieces), objective-major,
                # an empty tensor where an objective has none: one call.
                indices, at = [], start
                while at < stop:
                    indices.append(index_at[at])
                    at += bucket.numels[indices[-1]]
                empty = bucket.empty()
                run_grads = [empty if gs[i] is None else gs[i] for gs in pieces for i in indices]
                param = bucket.param_buffer[start:stop]
                states = {name: bucket.state[name][start:stop] for name in names}
            else:
                param, run_grads = bucket.param_buffer[start:stop], [g[start:stop] for g in grads]
                states = {name: bucket.state[name][start:stop] for name in names}
            # grad_scale is in the coefficients (amp.py); found_inf still makes the kernel skip every write.
            stats = self._call_step(
                group,
                param,
                states,
                run_grads,
                coefficients,
                lr,
                step,
                None,
                found_inf,
                self.diagnostics,
            )
            total = stats if total is None else total + stats
        # The kernels write the flat buffer (or a sharded parameter's local shard), not the parameters themselves:
        # bump the stepped parameters' version counters as torch.optim's in-place updates do, so that autograd still
        # refuses a backward through a graph that saved a parameter before this step.
        torch.autograd.graph.increment_version([p for p, hit in zip(bucket.params, reached, strict=True) if hit])
        if not self.diagnostics:
            return None
        return total if factors is None else amp.rescale_stats(total, factors)

    def _reduce_blended(self, grads, coefficients):
        """Distributed per-objective path: blend locally into g0's buffer (the weights are already global), then
        average that one buffer over the ranks: one all-reduce per bucket instead of one per objective. The fused
        step then runs with K = 1 and g0's coefficient (its statistics then describe the blended gradient only)."""
        g0 = grads[0]
        if len(grads) > 1:
            # Relative to g0's coefficient (1, or g0's unscale factor under a GradScaler): g0 is not rescaled here.
            torch.ops.mimo_ext.blend_.default(g0, list(grads[1:]), coefficients[1:] / coefficients[0], 1.0)
        dist.all_reduce(g0, group=self._dist_group)
        g0.div_(dist.get_world_size(self._dist_group))
        return [g0], coefficients[:1]


def _refuse_under_capture(bucket: FlatBucket) -> None:
    """A step that splits or resets step counts copies a count on the device; captured in a CUDA graph, every replay
    would copy it again (the count would never advance past the copy). Such a step must run before capture."""
    if bucket.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "mimo_ext optimizer: this step reaches a different set of parameters than the steps before it (or "
            "turns momentum on), which gives some parameters a step count of their own; that cannot happen inside "
            "CUDA graph capture. Run one step with the same parameters reached (the same losses and frozen "
            "parameters) before capturing"
        )


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for parameters of ``dtype`` (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False  # distinct tensors: not compared on the host (that would synchronise)
    return float(a) == float(b)
