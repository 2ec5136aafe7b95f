"""The per-objective path of the fused MIMO optimizers: ``opt.backward(f0, [f1..fM])`` runs one backward pass per
objective, into autograd's own fresh tensors (or, with a GradScaler, torch.distributed or after
``opt.clip_grad_norm_``, into that objective's flat gradient buffer), accumulating across calls as ``.grad`` does;
``step()`` then blends the K gradients inside its fused kernel.

:class:`PerObjectivePath` is a mixin of :class:`~mimo_ext.optim.base.MIMOOptimizer`: it uses the optimizer's
buckets (``_buckets``), host bookkeeping (``_host``) and coefficients (``_weights``, ``_coefficients``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from ..distributed import all_reduce_mean
from . import amp
from .diagnostics import StepDiagnostics
from .flat import FlatBucket

__all__ = ["HostState", "PendingObjectives", "PerObjectivePath", "describe"]


@dataclass
class PendingObjectives:
    """What the ``backward`` calls since the last ``zero_grad`` / ``step`` leave for the next ``step``."""

    uni_loss_sum: torch.Tensor  # [M] detached, unscaled, float64: the sum over the calls
    calls: int  # how many backward calls the sum holds
    reached: dict[int, list[bool]]  # per bucket id: any objective of any call reached the parameter
    num_objectives: int
    loss_scale: torch.Tensor | None  # the GradScaler scale the losses were multiplied by
    grad_scaler: torch.amp.GradScaler | None = None  # to tell, when clipping, whether g0 was unscaled in place
    clip: torch.Tensor | None = None  # the clip_grad_norm_ factor the step's coefficients are multiplied by
    # The gradients are autograd's own tensors, per objective and parameter (FlatBucket.pieces), not flat buffers.
    fresh: bool = False

    @property
    def uni_losses(self) -> torch.Tensor:
        # The weights come from the mean of the calls' losses: k calls on identical micro-batches then blend the
        # summed gradients with one call's weights, i.e. exactly k times one call's blended gradient.
        return self.uni_loss_sum / self.calls


class HostState:
    """The host bookkeeping that zero_grad / backward / step rewrite (see MIMOOptimizer._host)."""

    def __init__(self) -> None:
        self.pending: PendingObjectives | None = None
        # The number of objectives the per-objective buffers hold gradients of since the last zero_grad (None:
        # nothing accumulated): a backward call with another number would add unrelated gradients together.
        self.objectives: int | None = None
        self.last_diagnostics: StepDiagnostics | None = None
        # opt.mimo_loss made a loss since the last step: the single path's gradient then used the optimizer's gamma
        # and mu. warned: the warning that they may have been ignored was given (once per optimizer).
        self.mimo_loss_made = False
        self.warned_unused_mimo = False


class PerObjectivePath:
    """``backward``, ``clip_grad_norm_`` and what ``step`` needs of the per-objective gradients."""

    def backward(
        self,
        f0: torch.Tensor,
        uni_losses: Sequence[torch.Tensor] | torch.Tensor,
        *,
        grad_scaler: torch.amp.GradScaler | None = None,
        retain_graph: bool = False,
    ) -> None:
        """Runs one backward pass per objective, each into that objective's own gradients (autograd's fresh tensors;
        flat buffers where a GradScaler or torch.distributed needs them); the next ``step()`` blends them as
        ``g0 + gamma * sum_m softmax(f / mu)_m g_m`` inside its fused kernel.

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
        gradients from these passes. Afterwards ``.grad`` of every reached parameter is its g0 gradient (its slice
        of g0's flat buffer where the buffers are used).

        Not under torch.compile: losses computed by a model compiled with ``torch.compile`` (or inside a compiled
        function) raise ValueError before any backward runs. The K passes go through the same graph with
        ``retain_graph=True``, which AOTAutograd's compiled backward does not support: depending on when torch
        compiled it, it raises its "non-empty donated buffers" error or, with
        ``torch._functorch.config.donated_buffer=False``, returns wrong gradients for every objective after the
        first. Use the single backward there: ``opt.mimo_loss(f0, uni_losses).backward()`` (the optimizer's gamma
        and mu) then ``opt.step()``. The check walks the losses' autograd graph breadth first, from the losses, for the backward
        node torch.compile inserts (``CompiledFunctionBackward``), over at most 512 nodes (a compiled model is found
        within a few nodes of its losses; an eager graph costs a bounded walk, not per-parameter work).
        """
        uni = _as_loss_list(uni_losses, "uni_losses")
        self._check_parameters()
        if not isinstance(f0, torch.Tensor) or f0.dim() != 0:
            raise ValueError(f"f0 must be a 0-dim tensor, got {describe(f0)}")
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
        if any(b.sharded for b in buckets):
            raise ValueError(_SHARDED_MESSAGE.format(name=type(self).__name__))
        if any(b.complex for b in buckets):
            raise ValueError(
                f"{type(self).__name__}.backward: the per-objective path is not supported for complex parameters "
                "(their gradient buffers are laid out as real views); use the single backward: "
                "opt.mimo_loss(f0, uni_losses).backward(), then opt.step()"
            )
        params = [p for b in buckets for p in b.params if p.requires_grad]
        scale = None
        if grad_scaler is not None and grad_scaler.is_enabled():
            scale = grad_scaler.scale(torch.ones((), device=f0.device, dtype=torch.float32))
        pending = self._host.pending
        # Fresh gradients (autograd's own tensors, no buffer to zero-fill or accumulate into) unless a GradScaler
        # or torch.distributed needs the flat buffers (amp.py's checks, the one all-reduce per bucket) or earlier
        # calls since the last step already used them.
        fresh = scale is None and self._dist_group is None and (pending is None or pending.fresh)
        if fresh:
            reached = self._fresh_passes(buckets, objectives, params, retain_graph)
        else:
            self._materialize_pieces()
            reached = self._buffer_passes(buckets, objectives, params, retain_graph, scale)
        with torch.no_grad():
            uni_values = torch.stack([f.detach().to(torch.float64) for f in uni])
            if self._dist_group is not None:
                # Once per call: the mean over the ranks of each call's losses; their mean over the calls is then
                # the global mean, as every rank makes the same number of calls.
                uni_values = all_reduce_mean(uni_values, self._dist_group)  # the global batch's weights
        if pending is None:
            pending = PendingObjectives(uni_values, 1, reached, len(objectives), scale, grad_scaler, fresh=fresh)
        else:
            pending.uni_loss_sum = pending.uni_loss_sum + uni_values
            pending.calls += 1
            pending.reached = reached
            if pending.loss_scale is None:
                pending.loss_scale, pending.grad_scaler = scale, grad_scaler
        for b in buckets:
            b.touched = list(reached[id(b)])
            if fresh:
                b.start_piece_guard()
                continue
            for i, p in enumerate(b.params):
                p.grad = b.view(b.grad_buffers[0], i) if b.touched[i] else None
            if scale is not None:
                amp.flag_non_finite(b, len(objectives), pending.uni_losses)
            b.start_guard()
        self._host.pending = pending
        self._host.objectives = len(objectives)

    @staticmethod
    def _fresh_passes(buckets, objectives, params, retain_graph) -> dict[int, list[bool]]:
        """One backward pass per objective into autograd's own tensors: before pass k each ``.grad`` is set to
        objective k's gradient so far (None after zero_grad: autograd then allocates it, nothing is zero-filled),
        after it the tensor is taken back. ``.grad`` ends as g0's. Returns, per bucket, which parameters any
        objective (of any call since zero_grad) reached."""
        for b in buckets:
            b.start_pieces(len(objectives))
        for k, f in enumerate(objectives):
            for b in buckets:
                for p, g in zip(b.params, b.pieces[k], strict=True):
                    p.grad = g
            if f.requires_grad and params:
                torch.autograd.backward(f, retain_graph=retain_graph or k + 1 < len(objectives), inputs=params)
            for b in buckets:
                b.pieces[k] = [p.grad for p in b.params]
        for b in buckets:
            reached = b.pieces_reached()
            for i, p in enumerate(b.params):
                if reached[i] and b.pieces[0][i] is None:
                    # Reached by a uni-modal loss only (its head): g0 is zero there, and .grad None would mean "no
                    # gradient for any objective" (torch's meaning, e.g. after model.zero_grad()).
                    b.pieces[0][i] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                p.grad = b.pieces[0][i]
        return {id(b): b.pieces_reached() for b in buckets}

    def _buffer_passes(self, buckets, objectives, params, retain_graph, scale) -> dict[int, list[bool]]:
        """One backward pass per objective, each accumulating into that objective's flat buffer (``.grad`` its
        slice): the form amp.py's checks and the distributed reduction read."""
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
        return reached

    def _materialize_pieces(self) -> None:
        """Moves fresh per-objective gradients (FlatBucket.pieces) into the flat buffers, for the paths that read
        those (clipping, a GradScaler, torch.distributed); the pending step then reads the buffers."""
        pending = self._host.pending
        for bs in self._buckets:
            for b in bs:
                if b.pieces is None:
                    continue
                reached = b.materialize_pieces()
                if pending is not None and pending.fresh:
                    pending.reached[id(b)] = reached
                b.start_guard()
        if pending is not None:
            pending.fresh = False

    @staticmethod
    def _prepare_accumulation(bucket: FlatBucket, num_objectives: int) -> None:
        """Before a backward call adds to the K buffers: a parameter whose ``.grad`` is a view of g0's buffer holds
        its accumulated gradients there and in the other buffers. One whose ``.grad`` is None has none (torch's
        meaning of None: e.g. model.zero_grad() or a parameter no earlier call reached), so its slices are zeroed;
        one whose ``.grad`` is another tensor (another loss's backward created it) has that as its g0."""
        for k in range(num_objectives):
            bucket.grad_buffer(k)
        views = [bucket.is_grad_view(i) for i in range(len(bucket.params))]
        # The usual case after zero_grad() (no .grad a view): every slice is stale, each buffer is zeroed whole.
        whole = not any(views)
        stale = list(bucket.grad_buffers[:num_objectives]) if whole else []
        grads = []
        for i, p in enumerate(bucket.params):
            if views[i]:
                continue
            if not whole:
                stale += [bucket.view(buffer, i) for buffer in bucket.grad_buffers[:num_objectives]]
            if p.grad is not None:
                grads.append(i)
            else:
                bucket.touched[i] = False  # no gradient in torch's sense: not stepped unless this call reaches it
        if stale:
            with torch.no_grad():
                torch._foreach_zero_(stale)
        PerObjectivePath._fold_grad0(bucket, grads)

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
        self._materialize_pieces()
        norm_type = float(norm_type)
        max_norm = float(max_norm)
        grad_scale = None
        if pending.loss_scale is not None and not amp.scaler_unscaled(pending.grad_scaler, self):
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
                coefficients = self._coefficients(group, bucket, pending, weights, grad_scale)  # unscaled (amp.py)
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


def describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


# How many autograd nodes _compiled_region visits at most: a torch.compile'd model's region lies a few nodes below
# its losses (the loss functions), so this only bounds the host cost of the walk over a large eager graph.
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
        "torch.compile: opt.mimo_loss(f0, uni_losses).backward() (the optimizer's gamma and mu), then opt.step()"
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
            raise ValueError(f"{name}[{m}] must be a 0-dim tensor, got {describe(f)}")
    return out


_SHARDED_MESSAGE = (
    "{name}.backward: the per-objective path is not supported for sharded (DTensor) parameters, e.g. under FSDP2's "
    "fully_shard: FSDP2 reduce-scatters .grad itself after each backward pass, so the K passes would each cost a "
    "reduce-scatter of the whole model and land in FSDP2's gradients, not in per-objective buffers. Use the single "
    "backward, which FSDP2 reduces once: opt.mimo_loss(f0, uni_losses).backward() (the optimizer's gamma and mu), "
    "then opt.step()"
)
