"""The machinery shared by the fused MIMO optimizers: flat buckets, the two ways to feed gradients, the MIMO
coefficients, AMP, diagnostics and checkpoints. The subclasses (sgd.py, adamw.py) add only their hyperparameters,
their state buffers and the call of their step operator.

A step, per (param group, device, dtype) bucket, is one call of the algorithm's fused operator, which reads the
parameters, the state and the K gradient buffers once and writes parameters and state once.

Gradients come in one of two ways:

1. ``opt.backward(f0, [f1, ..., fM])`` runs one backward pass per objective, each accumulating straight into that
   objective's flat gradient buffer (``.grad`` points into it during the pass); ``opt.step()`` then blends them
   with ``[1, gamma * softmax(f / mu)]`` on the device, inside the fused step.
2. ``mimo_loss(...).backward()`` (or any loss) fills the ordinary ``.grad``; ``opt.step()`` uses it with K = 1.

A parameter that no backward pass reached since the last ``zero_grad`` is left unchanged, like a parameter whose
``.grad`` is None in torch.optim. Reach is recorded on the host by post-accumulate-grad hooks, so nothing is read
back from the device.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..distributed import all_reduce_mean, resolve_group
from ..objective import DEFAULT_MU
from ..ops import smooth_max
from .flat import FlatBucket, bucket_parameters

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


@dataclass
class _PendingObjectives:
    """What the ``backward`` calls since the last ``zero_grad`` / ``step`` leave for the next ``step``."""

    uni_loss_sum: torch.Tensor  # [M] detached, unscaled, float64: the sum over the calls
    calls: int  # how many backward calls the sum holds
    reached: dict[int, list[bool]]  # per bucket id: any objective of any call reached the parameter
    num_objectives: int
    loss_scale: torch.Tensor | None  # the GradScaler scale the losses were multiplied by
    grad_scaler: torch.amp.GradScaler | None = None  # to tell, when clipping, whether g0 was unscaled in place
    clip: torch.Tensor | None = None  # the clip_grad_norm_ factor the step's coefficients are multiplied by

    @property
    def uni_losses(self) -> torch.Tensor:
        # The weights come from the mean of the calls' losses: k calls on identical micro-batches then blend the
        # summed gradients with one call's weights, i.e. exactly k times one call's blended gradient.
        return self.uni_loss_sum / self.calls


class _HostState:
    """The host bookkeeping that zero_grad / backward / step rewrite (see MIMOOptimizer._host)."""

    def __init__(self) -> None:
        self.pending: _PendingObjectives | None = None
        # The number of objectives the per-objective buffers hold gradients of since the last zero_grad (None:
        # nothing accumulated): a backward call with another number would add unrelated gradients together.
        self.objectives: int | None = None
        self.last_diagnostics: StepDiagnostics | None = None


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_scalar_or_tensor(name: str, value, *, minimum: float, strict: bool = False) -> None:
    """A hyperparameter given as a float, or as a one-element floating tensor (e.g. a device tensor for CUDA graph
    capture). A float must be finite and >= minimum (> when strict); a tensor's value is checked only on the CPU,
    where that does not synchronise."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.numel() != 1:
            raise ValueError(
                f"{name} must be a float or a one-element floating tensor, got {value.dtype} "
                f"tensor of shape {tuple(value.shape)}"
            )
        if value.device.type != "cpu":
            return
        value = value.item()
    if not _is_real(value) or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")


class MIMOOptimizer(torch.optim.Optimizer):
    """Base class of the fused MIMO optimizers; see the module docstring. Not used directly."""

    # torch.amp.GradScaler then hands over `grad_scale` and `found_inf` instead of unscaling .grad itself.
    _step_supports_amp_scaling = True
    _op_name: str = ""
    # torch.optim's param-group keys that a checkpoint may lack (older torch, older mimo_ext), with the value
    # torch.optim's __setstate__ gives a group that lacks them; and the keys it sets whatever was loaded.
    _torch_group_defaults: dict = {}
    _torch_group_forced: dict = {}

    def __init__(
        self, params, defaults: dict, *, diagnostics: bool = False, sync: bool | None = None, process_group=None
    ) -> None:
        _check_torch_flags(type(self).__name__, defaults)
        # Distributed: resolved once (see mimo_ext.distributed); None when there is nothing to reduce. The arguments
        # are kept for copies: a pickled copy resolves them again in the process that loads it.
        self._dist_group = resolve_group(sync, process_group)
        self._dist_args = (sync, process_group)
        self._buckets: list[list[FlatBucket]] = []
        # Written by zero_grad / backward / step, so on an object of its own: torch < 2.12's dynamo cannot trace a
        # setattr on the optimizer itself (AssertionError "... does not have an AttributeMutation mutation_type").
        self._host = _HostState()
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
    def _pending(self) -> _PendingObjectives | None:
        return self._host.pending

    @_pending.setter
    def _pending(self, value: _PendingObjectives | None) -> None:
        self._host.pending = value

    # ---- subclass interface

    def _check_group(self, group: dict) -> None:
        """Raises ValueError for a bad hyperparameter of the group (lr, gamma and mu are checked here)."""
        check_scalar_or_tensor("lr", group["lr"], minimum=0.0)
        check_scalar_or_tensor("gamma", group["gamma"], minimum=0.0)
        check_scalar_or_tensor("mu", group["mu"], minimum=0.0, strict=True)
        if group.get("differentiable", False):
            raise ValueError(_differentiable_message(type(self).__name__))

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
        use_kernel: bool,
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

    def state_dict(self) -> dict:
        """torch.optim's format: per parameter its state buffers and its own ``step`` count (a 0-dim float32 tensor on
        the parameters' device, a copy), so a checkpoint loads into torch.optim.AdamW / SGD and back with identical
        next steps. Parameters that share a count in this optimizer get one tensor each here, as in torch.optim."""
        state_dict = super().state_dict()
        counts = {}
        for buckets in self._buckets:
            for bucket in buckets:
                for p, count in zip(bucket.params, bucket.steps.values(), strict=True):
                    counts[id(p)] = count
        ids = {id(p): i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        index_to_count = {ids[key]: value for key, value in counts.items()}
        state_dict["state"] = {
            index: {**entries, "step": index_to_count[index]} if "step" in entries else dict(entries)
            for index, entries in state_dict["state"].items()
        }
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch.optim's, then copies the loaded state into the flat buffers and the per-parameter step counts
        (training resumes bit-identically). Also loads torch.optim.AdamW / SGD checkpoints (see state_dict)."""
        state_dict = self._checked_for_loading(state_dict)
        flags = state_dict.get(_FLAGS_KEY)
        super().load_state_dict({k: v for k, v in state_dict.items() if k != _FLAGS_KEY})
        for g, (group, buckets) in enumerate(zip(self.param_groups, self._buckets, strict=True)):
            for b, bucket in enumerate(buckets):
                for name in self._state_names(group):
                    if name in bucket.state and not any(name in self.state.get(p, {}) for p in bucket.params):
                        bucket.state[name].zero_()  # a checkpoint taken before this state existed
                if flags is not None:
                    # Earlier mimo_ext checkpoints: one count per bucket, and flags of the parameters not stepped yet.
                    for p, stepped in zip(bucket.params, flags[g][b][1], strict=True):
                        if not stepped:
                            self.state[p]["step"] = torch.zeros((), dtype=torch.float32)
                self._bind_state(group, bucket, loaded=True)
        self._host.pending = None

    def _checked_for_loading(self, state_dict: dict) -> dict:
        """Validates a state_dict against this optimizer before anything is loaded, and returns it with the MIMO
        hyperparameters a torch.optim checkpoint lacks (gamma, mu) taken from this optimizer's groups.

        torch.optim's load_state_dict replaces the param groups and the state first: a state_dict of another
        optimizer (its groups lacking this one's hyperparameters) then left a half-loaded optimizer whose next step
        raised KeyError, one of another parameter layout raised from a copy after part of the state was loaded, and
        one of torch.optim.SGD / AdamW (no gamma, mu) broke the per-objective path (KeyError 'mu')."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), list):
            raise ValueError(
                f"{name}: state_dict must be a dict as returned by state_dict(), got {_describe(state_dict)}"
            )
        saved_groups, saved_state = state_dict["param_groups"], state_dict.get("state", {})
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"{name}: state_dict has {len(saved_groups)} param groups, this optimizer {len(self.param_groups)}"
            )
        flags = state_dict.get(_FLAGS_KEY)
        groups = []
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"{name}: state_dict's param_groups[{g}] holds {len(saved['params'])} parameters, this optimizer's "
                    f"{len(group['params'])}"
                )
            optional = ("gamma", "mu", *self._torch_group_defaults, *self._torch_group_forced)
            missing = [key for key in self.defaults if key not in saved and key not in optional]
            if missing:
                raise ValueError(
                    f"{name}: state_dict's param_groups[{g}] lacks the hyperparameters {missing}: it was written by "
                    "another optimizer"
                )
            merged = {**saved, "params": group["params"]}
            merged.setdefault("gamma", group["gamma"])
            merged.setdefault("mu", group["mu"])
            # torch.optim's keys that change nothing in our step (foreach, fused, capturable, ...): a checkpoint of an
            # older torch or of an older mimo_ext lacks some; they get the values torch.optim's __setstate__ gives
            # them, and AdamW's decoupled_weight_decay is True whatever was saved, as torch.optim.AdamW loads it.
            for key, value in self._torch_group_defaults.items():
                merged.setdefault(key, value)
            merged.update(self._torch_group_forced)
            self._check_group(merged)  # a bad value raises here, naming the hyperparameter
            for i, (pid, p) in enumerate(zip(saved["params"], group["params"], strict=True)):
                for key, value in saved_state.get(pid, {}).items():
                    if key != "step" and isinstance(value, torch.Tensor) and value.shape != p.shape:
                        raise ValueError(
                            f"{name}: state_dict's state {key!r} of parameter {i} of param_groups[{g}] has shape "
                            f"{tuple(value.shape)} but the parameter has shape {tuple(p.shape)}: another parameter "
                            "layout"
                        )
            groups.append({**merged, "params": saved["params"]})
        if flags is not None:
            try:
                shapes = [[len(stepped) for _, stepped in buckets] for buckets in flags]
            except (TypeError, ValueError):
                shapes = None
            if shapes != [[len(b.params) for b in buckets] for buckets in self._buckets]:
                raise ValueError(f"{name}: state_dict's step flags do not match this optimizer's parameters")
        return {**state_dict, "param_groups": groups}

    # ---- copies: copy.deepcopy, pickle, torch.save / torch.load, copy.copy

    def __getstate__(self) -> dict:
        """torch.optim's (defaults, state, param_groups), plus what a copy needs to rebuild its flat buckets and step
        on bit-identically: the diagnostics switch and the distributed setting (the step counts are in the state).

        torch.optim pickles no more than that; ours must also rebuild the buckets, which hold the parameters' and
        the state's storage, keep host flags and hooks on the parameters, and cannot be copied as they are: a copy
        whose parameters were not views of its own flat buffers would update buffers nothing reads."""
        state = super().__getstate__()
        state[_COPY_KEY] = {
            "diagnostics": self.diagnostics,
            "distributed": _DistributedSetting(self._dist_group, *self._dist_args),
        }
        return state

    def __setstate__(self, state: dict) -> None:
        """Ends a copy: the copied parameters (new tensors; the copied model's own when model and optimizer were
        copied together) are moved into new flat buffers, and the copied state values into state buffers of the
        same layout, as at construction. Stepping the copy then changes only the copy, by the numbers the original
        would get.

        torch.optim's load_state_dict also calls __setstate__, with the state and param groups only: that call is
        passed on unchanged (load_state_dict rebinds the buckets itself)."""
        extra = state.get(_COPY_KEY)
        if extra is None:
            super().__setstate__(state)
            return
        super().__setstate__({k: v for k, v in state.items() if k != _COPY_KEY})
        distributed: _DistributedSetting = extra["distributed"]
        self._dist_group = distributed.group
        self._dist_args = (distributed.sync, distributed.process_group)
        # A copy starts with no gradients (as the parameters torch copies: Parameter copies drop .grad) and so
        # nothing pending, no diagnostics yet and a fresh lr cache (it is keyed by bucket).
        self._host = _HostState()
        self._lr_tensors = {}
        self.diagnostics = bool(extra["diagnostics"])
        self._buckets = []
        for group in self.param_groups:
            buckets = bucket_parameters(group["params"])
            self._buckets.append(buckets)
            for bucket in buckets:
                # Every state buffer the original holds, also one its options no longer use (SGD's momentum turned
                # off): it would be used again, as in the original, if the option were turned back on.
                names = list(self._state_names(group))
                for p in bucket.params:
                    names += [n for n, v in self.state.get(p, {}).items() if n not in names and _is_state_of(v, p)]
                self._bind_state(group, bucket, loaded=True, names=names)

    def __copy__(self):
        """torch.optim's shallow copy shares the param groups and the state, so both objects step the same
        parameters; this one shares the flat buckets too (the parameters and the state are views of them) and the
        pending objectives (as the shared parameters share their ``.grad``)."""
        new = type(self).__new__(type(self))
        shared = ("defaults", "state", "param_groups", *_HOST_ATTRIBUTES)
        torch.optim.Optimizer.__setstate__(new, {key: self.__dict__[key] for key in shared})
        return new

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

    def backward(
        self,
        f0: torch.Tensor,
        uni_losses: Sequence[torch.Tensor] | torch.Tensor,
        *,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> None:
        """Runs one backward pass per objective, each accumulating into its own flat gradient buffer; the next
        ``step()`` blends them as ``g0 + gamma * sum_m softmax(f / mu)_m g_m`` inside its fused kernel.

        Accumulation, as ``.grad`` accumulates: only ``zero_grad()`` zeroes the buffers; each call adds its
        gradients to them (gradient accumulation over micro-batches: call it once per micro-batch, then step).
        Other losses' ``.backward()`` (an auxiliary loss), before or after this call, accumulate into g0's buffer
        (``.grad``; the fusion objective, coefficient 1). The weights ``softmax(f / mu)`` come from the mean of the
        calls' uni-modal losses since the last ``step()`` / ``zero_grad()`` (unscaled under a GradScaler; under
        torch.distributed each call's losses are averaged over the ranks as it runs), so k calls on identical
        micro-batches give exactly k times one call's blended gradient. A parameter is updated when any call or
        other backward reached it. Every call since ``zero_grad()`` must pass the same number of uni-modal losses
        (ValueError otherwise). ``.grad`` None means no gradient for any objective (e.g. after ``model.zero_grad()``).

        Clipping: use ``opt.clip_grad_norm_`` (it clips the blended gradient). An in-place write to ``.grad``
        after this call (``torch.nn.utils.clip_grad_norm_``, ``p.grad.mul_``) would change g0 alone: the next
        ``backward``, ``clip_grad_norm_`` or ``step`` raises ValueError for it (not with a GradScaler, which writes
        ``.grad`` in place itself).

        Args:
            f0: the fusion loss, a 0-dim tensor.
            uni_losses: the M uni-modal losses, a sequence of 0-dim tensors or a 1-D tensor.
            grad_scaler: a ``torch.amp.GradScaler`` to use with ``grad_scaler.step(opt)``: each objective is scaled
                by it for its backward pass, the weights use the unscaled losses, and a non-finite value in any
                objective's gradient makes the scaler skip the step (and lower its scale).
            retain_graph: keep the graph after the last pass.

        The losses stay on the device: nothing is synchronised. Only the parameters of this optimizer receive
        gradients from these passes. Afterwards ``.grad`` of every reached parameter is its slice of g0's buffer.

        Not under torch.compile: losses computed by a model compiled with ``torch.compile`` (or inside a compiled
        function) raise ValueError before any backward runs. The K passes go through the same graph with
        ``retain_graph=True``, which AOTAutograd's compiled backward does not support: depending on when torch
        compiled it, it raises its "non-empty donated buffers" error or, with
        ``torch._functorch.config.donated_buffer=False``, returns wrong gradients for every objective after the
        first. Use the single backward there: ``mimo_loss(f0, uni_losses, gamma=..., mu=...).backward()`` then
        ``opt.step()``. The check walks the losses' autograd graph breadth first, from the losses, for the backward
        node torch.compile inserts (``CompiledFunctionBackward``), over at most 512 nodes (a compiled model is found
        within a few nodes of its losses; an eager graph costs a bounded walk, not per-parameter work).
        """
        uni = _as_loss_list(uni_losses, "uni_losses")
        self._check_parameters()
        if not isinstance(f0, torch.Tensor) or f0.dim() != 0:
            raise ValueError(f"f0 must be a 0-dim tensor, got {_describe(f0)}")
        if not uni:
            raise ValueError("uni_losses must hold at least one loss")
        objectives = [f0, *uni]
        if len(objectives) > 16:
            raise ValueError(f"at most 15 uni-modal losses are supported by the fused step, got {len(uni)}")
        for m, f in enumerate(uni):
            if f.device != f0.device:
                raise ValueError(f"uni_losses[{m}] is on {f.device} but f0 is on {f0.device}")
        compiled = _compiled_region(objectives)
        if compiled is not None:
            raise ValueError(_compiled_message(type(self).__name__, compiled))
        if self._host.objectives is not None and self._host.objectives != len(objectives):
            raise ValueError(
                f"{type(self).__name__}.backward: this call has {len(objectives)} objectives (f0 and {len(uni)} "
                f"uni-modal losses) but the gradients accumulated since the last zero_grad() are of "
                f"{self._host.objectives}: call opt.zero_grad() before changing the number of losses"
            )
        self._check_grad0_unchanged("backward")
        buckets = [b for bs in self._buckets for b in bs]
        params = [p for b in buckets for p in b.params if p.requires_grad]
        scale = None
        if grad_scaler is not None and grad_scaler.is_enabled():
            scale = grad_scaler.scale(torch.ones((), device=f0.device, dtype=torch.float32))
        for b in buckets:
            self._prepare_accumulation(b, len(objectives))
        # Reach is the union over this call's passes, the earlier calls and other losses' backward passes since
        # zero_grad (b.touched holds the last two here).
        reached = {id(b): list(b.touched) for b in buckets}
        for k, f in enumerate(objectives):
            for b in buckets:
                b.point_grads_at(k)
                b.touched = [False] * len(b.params)
            if f.requires_grad and params:
                target = f * scale.to(f.dtype) if scale is not None else f
                torch.autograd.backward(target, retain_graph=retain_graph or k + 1 < len(objectives), inputs=params)
            for b in buckets:
                reached[id(b)] = [r or t for r, t in zip(reached[id(b)], b.touched, strict=True)]
        with torch.no_grad():
            uni_values = torch.stack([f.detach().to(torch.float64) for f in uni])
            if self._dist_group is not None:
                # Once per call: the mean over the ranks of each call's losses; their mean over the calls is then
                # the global mean, as every rank makes the same number of calls.
                uni_values = all_reduce_mean(uni_values, self._dist_group)  # the global batch's weights
        pending = self._host.pending
        if pending is None:
            pending = _PendingObjectives(uni_values, 1, reached, len(objectives), scale, grad_scaler)
        else:
            pending.uni_loss_sum = pending.uni_loss_sum + uni_values
            pending.calls += 1
            pending.reached = reached
            if pending.loss_scale is None:
                pending.loss_scale, pending.grad_scaler = scale, grad_scaler
        for b in buckets:
            b.touched = list(reached[id(b)])
            for i, p in enumerate(b.params):
                p.grad = b.view(b.grad_buffers[0], i) if b.touched[i] else None
            if scale is not None:
                self._flag_non_finite(b, len(objectives), pending.uni_losses)
            b.start_guard()
        self._host.pending = pending
        self._host.objectives = len(objectives)

    @staticmethod
    def _prepare_accumulation(bucket: FlatBucket, num_objectives: int) -> None:
        """Before a backward call adds to the K buffers: a parameter whose ``.grad`` is a view of g0's buffer holds
        its accumulated gradients there and in the other buffers. One whose ``.grad`` is None has none (torch's
        meaning of None: e.g. model.zero_grad() or a parameter no earlier call reached), so its slices are zeroed;
        one whose ``.grad`` is another tensor (another loss's backward created it) has that as its g0."""
        for k in range(num_objectives):
            bucket.grad_buffer(k)
        stale, grads = [], []
        for i, p in enumerate(bucket.params):
            if bucket.is_grad_view(i):
                continue
            stale += [bucket.view(buffer, i) for buffer in bucket.grad_buffers[:num_objectives]]
            if p.grad is not None:
                grads.append(i)
        if stale:
            with torch.no_grad():
                torch._foreach_zero_(stale)
        MIMOOptimizer._fold_grad0(bucket, grads)

    @staticmethod
    def _fold_grad0(bucket: FlatBucket, indices: list[int] | None = None) -> None:
        """Copies a ``.grad`` that is not a view of g0's buffer (another loss's backward created it after the
        parameter's .grad was None, or create_graph replaced it) into the buffer, and makes .grad that view."""
        if indices is None:
            indices = [i for i, p in enumerate(bucket.params) if p.grad is not None and not bucket.is_grad_view(i)]
        with torch.no_grad():
            for i in indices:
                view = bucket.view(bucket.grad_buffers[0], i)
                view.copy_(bucket.params[i].grad)
                bucket.params[i].grad = view
                bucket.touched[i] = True

    def _check_grad0_unchanged(self, where: str) -> None:
        """Raises ValueError when g0's buffer (``.grad``) was written in place since opt.backward other than by
        autograd accumulation: e.g. torch.nn.utils.clip_grad_norm_ or p.grad.mul_, which scale g0 alone and so
        silently shift the balance between the objectives. Not checked with a GradScaler: the scaler itself writes
        .grad in place (unscale_, its inf check), which the version counter cannot tell from another write."""
        pending = self._host.pending
        if pending is None or pending.loss_scale is not None:
            return
        for bs in self._buckets:
            for b in bs:
                if b.guard_broken():
                    raise ValueError(
                        f"{type(self).__name__}.{where}: .grad was modified in place after opt.backward (e.g. "
                        "torch.nn.utils.clip_grad_norm_ or p.grad.mul_). On the per-objective path .grad is only "
                        "the fusion objective's gradient g0, so that changes g0 alone and shifts the balance "
                        "between the objectives. Use opt.clip_grad_norm_(max_norm), which clips the blended "
                        "gradient the step uses"
                    )

    @torch.no_grad()
    def clip_grad_norm_(
        self, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False
    ) -> torch.Tensor:
        """Clips the gradient the next ``step()`` will use, as ``torch.nn.utils.clip_grad_norm_`` clips ``.grad``:
        returns its total norm over all parameters of this optimizer (a device tensor: nothing is synchronised
        unless error_if_nonfinite=True) and scales it by ``min(1, max_norm / (total_norm + 1e-6))``.

        On the single-backward path that gradient is ``.grad`` and this is torch's clip_grad_norm_. On the
        per-objective path (after ``opt.backward``) it is the blended gradient ``sum_k c_k g_k`` with the step's
        coefficients (after unscaling when a GradScaler is in play: call ``scaler.unscale_(opt)`` first or not, the
        norm is of the unscaled gradient); the factor is kept on the device and multiplies the step's coefficients,
        so the step applies exactly the clipped blended gradient. ``torch.nn.utils.clip_grad_norm_`` there would see
        and scale g0 alone (``.grad``). Not supported on the per-objective path under torch.distributed, where the
        gradients are averaged over the ranks only inside step()."""
        pending = self._host.pending
        if pending is None:
            params = [p for group in self.param_groups for p in group["params"]]
            return torch.nn.utils.clip_grad_norm_(
                params, max_norm, norm_type=norm_type, error_if_nonfinite=error_if_nonfinite
            )
        if self._dist_group is not None:
            raise ValueError(
                f"{type(self).__name__}.clip_grad_norm_ is not supported on the per-objective path under "
                "torch.distributed: the gradients are averaged over the ranks inside step(), so no rank holds the "
                "global blended gradient before it"
            )
        self._check_grad0_unchanged("clip_grad_norm_")
        norm_type = float(norm_type)
        max_norm = float(max_norm)
        grad_scale = None
        if pending.loss_scale is not None and not _unscaled(pending.grad_scaler, self):
            grad_scale = pending.loss_scale  # the scale step() will get from GradScaler.step, g0 is still scaled
        norms = []
        out_dtype = None
        first_device = None
        for group, buckets in zip(self.param_groups, self._buckets, strict=True):
            weights = self._weights(group, pending)
            for bucket in buckets:
                self._fold_grad0(bucket)
                if not any(bucket.touched):
                    continue
                coefficients = self._coefficients(group, bucket, pending, weights, grad_scale)
                if grad_scale is not None:
                    coefficients = coefficients / grad_scale.to(bucket.device, coefficients.dtype)
                grads = bucket.grad_buffers[: pending.num_objectives]
                # One read pass over the K buffers: unreached parameters' slices are zero in every buffer.
                blended = grads[0].to(coefficients.dtype) * coefficients[0]
                for g, c in zip(grads[1:], coefficients[1:], strict=True):
                    blended.addcmul_(g, c)
                norms.append(torch.linalg.vector_norm(blended, norm_type))
                out_dtype = out_dtype or bucket.dtype
                first_device = first_device or bucket.device
                bucket.start_guard()  # the folds above are ours
        if not norms:
            return torch.tensor(0.0)  # as torch's for no gradients
        total = torch.linalg.vector_norm(torch.stack([n.to(first_device, torch.float64) for n in norms]), norm_type)
        total = total.to(out_dtype if out_dtype.is_floating_point else torch.float32)
        if error_if_nonfinite and torch.logical_or(total.isnan(), total.isinf()):
            raise RuntimeError(
                f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, so it cannot be "
                "clipped. To disable this error and scale the gradients by the non-finite norm anyway, set "
                "`error_if_nonfinite=False`"
            )
        # torch's factor, in torch's order of operations (computed in the norm's dtype).
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        pending.clip = factor if pending.clip is None else pending.clip * factor
        return total

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

    @staticmethod
    def _flag_non_finite(bucket: FlatBucket, num_objectives: int, uni_losses: torch.Tensor) -> None:
        # GradScaler inspects .grad only, i.e. g0's buffer. A non-finite value in another objective's buffer is
        # carried into g0 (a NaN in its first reached element) so the scaler sees it, skips the step and backs off.
        # So is a non-finite uni-modal loss: it makes the MIMO weights NaN, and the step used to write NaN into every
        # parameter although each gradient was finite (the single-backward path gets NaN gradients from the same
        # loss, which the scaler catches).
        first = next((i for i, hit in enumerate(bucket.touched) if hit and bucket.numels[i] > 0), None)
        if first is None or num_objectives < 2:
            return
        flag = torch.zeros(1, device=bucket.device, dtype=torch.float32)
        torch._amp_foreach_non_finite_check_and_unscale_(
            bucket.grad_buffers[1:num_objectives], flag, torch.ones(1, device=bucket.device)
        )
        losses_bad = ~torch.isfinite(uni_losses).all()
        flag = torch.maximum(flag, losses_bad.to(bucket.device, torch.float32).reshape(1))
        start = bucket.offsets[first]
        g0 = bucket.grad_buffers[0][start : start + 1]
        g0.add_(torch.where(flag > 0, float("nan"), 0.0).to(g0.dtype))

    # ---- the step

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step (see the module docstring for where the gradients come from).

        Args:
            closure: re-evaluates the model and returns the loss (run with gradients enabled), as in torch.optim.
        """
        # Everything is validated before anything is written: a hyperparameter set to NaN in a param group after
        # construction (or an lr scheduler's bad value) used to be applied silently (lr, gamma), or to raise from
        # the op of a later group after the earlier groups had been updated (mu, betas: a half-written step).
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

    def _weights(self, group: dict, pending: _PendingObjectives) -> torch.Tensor:
        # In float64 (M values, on the device): float64 parameters then get float64-accurate coefficients even from
        # float32 losses, and the cast to each bucket's math dtype rounds once.
        mu = group["mu"]
        losses = pending.uni_losses.double()
        if isinstance(mu, torch.Tensor):
            # softmax(f / mu) = smooth_max(f / mu, 1): the temperature stays on the device.
            return smooth_max(losses / mu.to(losses.device, torch.float64).reshape(()), 1.0)[1]
        return smooth_max(losses, float(mu))[1]

    def _coefficients(self, group, bucket, pending, weights, grad_scale) -> torch.Tensor:
        device = bucket.device
        dtype = _math_dtype(bucket.dtype)
        gamma = group["gamma"]
        if isinstance(gamma, torch.Tensor):
            gamma = gamma.to(device, dtype).reshape(())
        tail = weights.to(device, dtype, non_blocking=device.type == "cuda") * gamma
        if pending.loss_scale is not None:
            # g_m (m >= 1) were scaled by the loss scale of backward(); g0 is divided by grad_scale in the kernel,
            # which is that same scale, or None when GradScaler.unscale_ already unscaled g0 (.grad) in place.
            factor = pending.loss_scale.to(device).reciprocal()
            if grad_scale is not None:
                factor = factor * grad_scale.to(device, dtype)
            tail = tail * factor
        coefficients = torch.cat([torch.ones(1, device=device, dtype=dtype), tail.to(dtype)])
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
        if pending is not None:
            # Another loss's backward after opt.backward may have given a parameter a .grad of its own (it was
            # None): it is g0's too. Accumulations into the views are in the buffer already.
            self._fold_grad0(bucket)
            bucket.guard_base = None
            grads = bucket.grad_buffers[: pending.num_objectives]
            reached = [r or t for r, t in zip(pending.reached[id(bucket)], bucket.touched, strict=True)]
            coefficients = self._coefficients(group, bucket, pending, weights, grad_scale)
            if self._dist_group is not None:
                grads, coefficients = self._reduce_blended(bucket, grads, coefficients)
        else:
            grads, reached = self._single_grads(bucket)
            coefficients = torch.ones(1, device=bucket.device, dtype=_math_dtype(bucket.dtype))
        names = self._state_names(group)
        new = [name for name in names if name not in bucket.state]
        if new:
            self._bind_state(group, bucket, loaded=False)  # an option turned on after construction
            if self._restarts_with(new):
                bucket.steps.reset()
                bucket.publish_steps(self.state)
        # Per-parameter counts, as torch.optim keeps them (see step_counts.py): one launch per run of consecutive
        # reached parameters that share a count.
        if bucket.steps.split(reached):
            bucket.steps.prune()
            bucket.publish_steps(self.state)
        runs = bucket.steps.runs(reached, bucket.offsets, bucket.numels)
        if not runs:
            return None
        lr = self._lr_tensor(group, bucket)
        if grad_scale is not None:
            grad_scale = grad_scale.to(bucket.device)
        if found_inf is not None:
            found_inf = found_inf.to(bucket.device)
        total = None
        for start, stop, step in runs:
            stats = self._call_step(
                group,
                bucket.param_buffer[start:stop],
                {name: bucket.state[name][start:stop] for name in names},
                [g[start:stop] for g in grads],
                coefficients,
                lr,
                step,
                grad_scale,
                found_inf,
                self.diagnostics,
            )
            total = stats if total is None else total + stats
        if self.diagnostics and pending is not None and pending.loss_scale is not None:
            total = total * self._stats_rescale(pending, grad_scale, total)
        return total if self.diagnostics else None

    def _reduce_blended(self, bucket, grads, coefficients):
        """Distributed per-objective path: blend locally into g0's buffer (the weights are already global), then
        average that one buffer over the ranks: one all-reduce per bucket instead of one per objective. The fused
        step then runs with K = 1 (its statistics then describe the blended gradient only)."""
        g0 = grads[0]
        if len(grads) > 1:
            torch.ops.mimo_ext.blend_.default(g0, list(grads[1:]), coefficients[1:], 1.0)
        dist.all_reduce(g0, group=self._dist_group)
        g0.div_(dist.get_world_size(self._dist_group))
        # c0 stays: it is 1, and the kernel divides by grad_scale itself.
        return [g0], coefficients[:1]

    @staticmethod
    def _stats_rescale(pending, grad_scale, stats) -> torch.Tensor:
        # The kernel divided every raw buffer's statistics by grad_scale^2; g_m (m >= 1) were scaled by loss_scale.
        k = pending.num_objectives
        ratio = pending.loss_scale.to(stats.device, stats.dtype).reciprocal()
        if grad_scale is not None:
            ratio = ratio * grad_scale.to(stats.device, stats.dtype)
        one = torch.ones(1, device=stats.device, dtype=stats.dtype)
        sq = torch.cat([one, (ratio * ratio).expand(k - 1)])
        dots = ratio.expand(k - 1)
        return torch.cat([sq, dots.reshape(-1), one])


# state_dict key of the per-bucket step flags (see MIMOOptimizer.state_dict).
_FLAGS_KEY = "mimo_step_flags"
# __getstate__ key of what a copy needs besides torch.optim's state (see MIMOOptimizer.__getstate__).
_COPY_KEY = "_mimo_copy"
# Attributes of MIMOOptimizer.__init__ besides torch.optim's, shared by a shallow copy.
_HOST_ATTRIBUTES = ("_dist_group", "_dist_args", "_buckets", "_host", "_lr_tensors", "diagnostics")


def _differentiable_message(name: str) -> str:
    return (
        f"{name}: differentiable=True is not supported: the fused step updates the flat buffers in place under "
        "torch.no_grad(), so no gradient flows through it (use torch.optim's optimizer with differentiable=True to "
        "differentiate through an optimizer step)"
    )


def _check_torch_flags(name: str, defaults: dict) -> None:
    """torch.optim's constructor checks of foreach / fused / differentiable, before anything is built (torch.optim
    raises them after the param groups were added, when ours would already have moved the parameters)."""
    if defaults.get("differentiable", False):
        raise ValueError(_differentiable_message(name))
    if defaults.get("fused") and defaults.get("foreach"):
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")  # torch.optim's error, word for word


def _is_state_of(value, param: torch.Tensor) -> bool:
    """Whether a state entry is a per-element buffer of ``param`` (not the step count)."""
    return isinstance(value, torch.Tensor) and value.shape == param.shape and value.dtype == param.dtype


class _DistributedSetting:
    """The distributed arguments of an optimizer (sync, process_group) and the group they resolved to, as a copy
    carries them. copy.deepcopy keeps the same group (the copy lives in the same process, with the same ranks).
    Pickling (pickle, torch.save) cannot carry a process group: the copy resolves sync again in the process that
    loads it, as the constructor would there, which is only possible for the default group."""

    def __init__(self, group, sync: bool | None, process_group) -> None:
        self.group = group
        self.sync = sync
        self.process_group = process_group

    def __deepcopy__(self, memo) -> _DistributedSetting:
        return self

    def __reduce__(self):
        # sync=False never reduces, so the group does not matter; otherwise only the default group can be found again.
        default = self.process_group is None or (dist.is_initialized() and self.process_group is dist.group.WORLD)
        if not (default or self.sync is False):
            raise TypeError(
                "an optimizer built with process_group= (a group other than the default one) cannot be pickled: a "
                "process group cannot be carried to another process. Save opt.state_dict() and build the optimizer "
                "again with its process_group, or copy it with copy.deepcopy in this process"
            )
        return (_resolve_distributed_setting, (self.sync,))


def _resolve_distributed_setting(sync: bool | None) -> _DistributedSetting:
    return _DistributedSetting(resolve_group(sync, None), sync, None)


def _unscaled(scaler: torch.amp.GradScaler | None, optimizer) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` has run since its last update (g0, i.e. .grad, is then unscaled).
    GradScaler keeps this in its per-optimizer state; its stage enum has been named so since torch 1.6."""
    if scaler is None:
        return False
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
    return state is not None and getattr(state.get("stage"), "name", None) == "UNSCALED"


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for parameters of ``dtype`` (float64 stays float64)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _diagnostics(stats: torch.Tensor, weights: torch.Tensor | None) -> StepDiagnostics:
    k = stats.numel() // 2
    norms = stats[:k].clamp_min(0).sqrt()
    dots = stats[k : 2 * k - 1]
    cosines = dots / (norms[0] * norms[1:]).clamp_min(torch.finfo(torch.float64).tiny)
    return StepDiagnostics(weights=weights, grad_norms=norms, cosines=cosines, grad_norm=stats[-1].clamp_min(0).sqrt())


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# How many autograd nodes _compiled_region visits at most: a torch.compile'd model's region lies a few nodes below
# its losses (the loss functions), so this only bounds the cost of the walk over a large eager graph (about 0.5 us
# per node, 0.25 ms in all on a loaded 2-core machine; a small late-fusion model's whole graph costs 20 us).
_GRAPH_WALK_LIMIT = 512


@torch.compiler.disable
def _compiled_region(losses: Sequence[torch.Tensor]) -> str | None:
    """The type name of the first backward node of a torch.compile region met in a breadth-first walk of the losses'
    autograd graph, or None. AOTAutograd runs a compiled region as an autograd.Function named ``CompiledFunction``
    (so named since torch 2.0; 2.14 still), whose node is ``CompiledFunctionBackward``
    (``CompiledFunctionBackwardBackward`` for its double backward). At most _GRAPH_WALK_LIMIT nodes are visited,
    nearest the losses first.

    Run eagerly (never traced): inside a compiled training step it must see the real graph the backward passes
    will run through."""
    queue = deque(f.grad_fn for f in losses if f.grad_fn is not None)
    seen = set()
    visited = 0
    while queue and visited < _GRAPH_WALK_LIMIT:
        node = queue.popleft()
        if node in seen:
            continue
        seen.add(node)
        visited += 1
        name = type(node).__name__
        if name.startswith("CompiledFunction"):
            return name
        queue.extend(child for child, _ in node.next_functions if child is not None and child not in seen)
    return None


def _compiled_message(name: str, node: str) -> str:
    return (
        f"{name}.backward: the losses come from a torch.compile'd model or function (their autograd graph holds "
        f"{node}), and the per-objective path is not supported there: it runs one backward per objective through "
        "the same graph (retain_graph=True), which a backward compiled by torch.compile does not support (torch "
        "raises its 'non-empty donated buffers' error, or, with torch._functorch.config.donated_buffer=False, gives "
        "every objective after the first wrong gradients). Use the single backward, which works under "
        "torch.compile: mimo_ext.mimo_loss(f0, uni_losses, gamma=..., mu=...).backward() with the optimizer's "
        "gamma and mu, then opt.step()"
    )


def _as_loss_list(losses, name: str) -> list[torch.Tensor]:
    if isinstance(losses, torch.Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"{name} must be a sequence of 0-dim tensors or a 1-D tensor, got shape {tuple(losses.shape)}"
            )
        return list(losses.unbind())
    if not isinstance(losses, Iterable):
        raise TypeError(f"{name} must be a sequence of 0-dim tensors or a 1-D tensor, got {type(losses).__name__}")
    out = list(losses)
    for m, f in enumerate(out):
        if not isinstance(f, torch.Tensor) or f.dim() != 0:
            raise ValueError(f"{name}[{m}] must be a 0-dim tensor, got {_describe(f)}")
    return out
