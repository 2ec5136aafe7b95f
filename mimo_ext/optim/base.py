"""The base of the fused MIMO optimizers: param groups, hyperparameter checks, zero_grad, the MIMO coefficients
and the step. The subclasses (sgd.py, adamw.py) add only their hyperparameters, their state buffers and the call
of their step operator. Beside it, one job per module: flat.py (the flat buckets, which own their state and step
counts), step_counts.py (per-parameter step counts), objectives.py (the per-objective backward and clipping),
amp.py (loss scaling), checkpoint.py (state_dict and copies).

A step, per (param group, device, dtype) bucket, is one call of the algorithm's fused operator, which reads the
parameters, the state and the K gradient buffers once and writes parameters and state once.

Gradients come in one of two ways:

1. ``opt.backward(f0, [f1, ..., fM])`` runs one backward pass per objective, each accumulating straight into that
   objective's flat gradient buffer (``.grad`` points into it during the pass); ``opt.step()`` then blends them
   with ``[1, gamma * softmax(f / mu)]`` on the device, inside the fused step.
2. ``mimo_loss(...).backward()`` (or any loss) fills the ordinary ``.grad``; ``opt.step()`` uses it with K = 1.

The parameters stepped are those holding a gradient in torch's sense (see FlatBucket.touched and zero_grad),
recorded on the host by post-accumulate-grad hooks, so nothing is read back from the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..distributed import resolve_group
from ..objective import DEFAULT_MU
from ..ops import smooth_max
from . import amp
from .arguments import check_floats, check_mimo_hyperparameters, check_torch_flags
from .checkpoint import Checkpointing
from .flat import FlatBucket, bucket_parameters
from .objectives import HostState, PendingObjectives, PerObjectivePath

__all__ = ["MIMOOptimizer", "StepDiagnostics"]


@dataclass
class StepDiagnostics:
    """Gradient statistics of the last step, as device tensors (reading them synchronises; the step does not).

    Attributes:
        weights: ``softmax(f / mu)`` over the M uni-modal losses (of the first param group), or None on the
            single-backward path, where the optimizer does not see the losses.
        grad_norms: ``[K]`` norm of each objective's gradient (K = M + 1 on the per-objective path, 1 otherwise).
        cosines: ``[M]`` cosine between the fusion gradient g0 and each uni-modal gradient g_m (empty for K = 1).
        grad_norm: norm of the blended gradient the update used.
    """

    weights: torch.Tensor | None
    grad_norms: torch.Tensor
    cosines: torch.Tensor
    grad_norm: torch.Tensor


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
        defaults.setdefault("gamma", 1.0)
        defaults.setdefault("mu", DEFAULT_MU)
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
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for p in group["params"]:
                if not p.is_floating_point():
                    raise TypeError(f"{type(self).__name__}: parameters must be floating point, got {p.dtype}")
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
        """Zeroes the flat gradient buffers (one operation per bucket), as torch.optim's zero_grad zeroes ``.grad``.

        set_to_none=True (the default): every parameter is then without a gradient in torch's sense, and ``step``
        skips the parameters the next backward does not reach. ``.grad`` stays a (zero) view of the flat buffer, so
        the next backward accumulates straight into it; it is treated as None until a backward reaches it.
        set_to_none=False: a parameter that had a gradient keeps a zero one, and ``step`` updates it as torch.optim
        does (weight decay and momentum still move it), also when no later backward reaches it (e.g. a frozen
        encoder). Gradients that are not views of the buffer are set to None (or zeroed)."""
        for buckets in self._buckets:
            for bucket in buckets:
                views = [bucket.is_grad_view(i) for i in range(len(bucket.params))]
                if any(views):
                    bucket.grad_buffers[0].zero_()
                # The other objectives' buffers accumulate over opt.backward calls, as .grad does over backward
                # passes: only zero_grad clears them (they exist only once the per-objective path was used).
                for buffer in bucket.grad_buffers[1:]:
                    buffer.zero_()
                bucket.guard_base = None
                for i, p in enumerate(bucket.params):
                    if p.grad is not None and not views[i]:
                        if set_to_none:
                            p.grad = None
                        else:
                            p.grad.zero_()
                if set_to_none:
                    bucket.touched = [False] * len(bucket.params)
        self._host.pending = None
        self._host.objectives = None

    # ---- the per-objective path

    def _check_parameters(self) -> None:
        """Raises ValueError when a parameter's ``.data`` no longer views the flat buffer (see FlatBucket)."""
        for g, (group, buckets) in enumerate(zip(self.param_groups, self._buckets, strict=True)):
            for bucket in buckets:
                i = bucket.moved_view()
                if i is not None:
                    p = bucket.params[i]
                    j = next(j for j, q in enumerate(group["params"]) if q is p)
                    raise ValueError(
                        f"{type(self).__name__}: parameter {j} of param_groups[{g}] (shape {tuple(p.shape)}, was "
                        f"{tuple(bucket.view_shapes[i])} when it was built) is no longer a view of the "
                        "optimizer's flat buffer: its .data was replaced or re-shaped after the optimizer was built"
                    )

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
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if not isinstance(found_inf, torch.Tensor):
            found_inf = None  # GradScaler passes 0 when no .grad was there to check
        self._check_grad0_unchanged("step")
        pending, self._host.pending = self._host.pending, None
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
        self._host.last_diagnostics = _diagnostics(stats_sum, weights_report) if stats_sum is not None else None
        return loss

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

    def _single_grads(self, bucket: FlatBucket) -> tuple[list[torch.Tensor], list[bool]]:
        """The K = 1 path: .grad in the flat buffer 0 (copied there once when it is not already a view of it)."""
        buffer = bucket.grad_buffer(0)
        reached = []
        for i, p in enumerate(bucket.params):
            if p.grad is None:
                reached.append(False)
            elif bucket.is_grad_view(i):
                reached.append(bucket.touched[i])
            else:
                view = bucket.view(buffer, i)
                view.copy_(p.grad)
                p.grad = view
                bucket.touched[i] = True
                reached.append(True)
        return [buffer], reached

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
        if pending is not None:
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
            coefficients = factors if factors is not None else torch.ones(1, device=bucket.device, dtype=dtype)
        else:
            grads, reached = self._single_grads(bucket)
            factors = amp.unscale_factors(1, grad_scale, None, bucket.device, dtype)
            coefficients = factors if factors is not None else torch.ones(1, device=bucket.device, dtype=dtype)
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
        shard_at = (
            {bucket.offsets[i]: i for i in range(len(bucket.params)) if bucket.numels[i]} if grads is None else {}
        )
        for start, stop, step in runs:
            if grads is None:
                i = shard_at[start]
                param, run_grads = bucket.local_param(i).view(-1), [bucket.local_grad(i).reshape(-1)]
                states = {name: bucket.state_of(name, i) for name in names}
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


def _diagnostics(stats: torch.Tensor, weights: torch.Tensor | None) -> StepDiagnostics:
    k = stats.numel() // 2
    norms = stats[:k].clamp_min(0).sqrt()
    dots = stats[k : 2 * k - 1]
    cosines = dots / (norms[0] * norms[1:]).clamp_min(torch.finfo(torch.float64).tiny)
    return StepDiagnostics(weights=weights, grad_norms=norms, cosines=cosines, grad_norm=stats[-1].clamp_min(0).sqrt())
