"""Checkpoints and copies of the fused MIMO optimizers: ``state_dict`` / ``load_state_dict`` in torch.optim's
format (loading torch.optim.AdamW / SGD checkpoints too), validated before anything is loaded, and
``copy.deepcopy`` / pickle / ``torch.save`` / ``copy.copy`` of an optimizer whose parameters live in flat buffers.

:class:`Checkpointing` is a mixin of :class:`~mimo_ext.optim.base.MIMOOptimizer`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..distributed import resolve_group
from .amp import set_step_unscales, step_unscales
from .flat import bucket_parameters, is_dtensor
from .objectives import HostState, describe

__all__ = ["Checkpointing"]


class Checkpointing:
    """torch.optim's checkpoint and copy protocol over flat buckets."""

    def state_dict(self) -> dict:
        """torch.optim's format: per parameter its state buffers and its own ``step`` count (a 0-dim float32 tensor on
        the parameters' device, a copy), so a checkpoint loads into torch.optim.AdamW / SGD and back with identical
        next steps. Parameters that share a count in this optimizer get one tensor each here, as in torch.optim.

        A parameter that has not stepped yet has its (zero) state and a count of 0 here, where torch.optim would have
        no entry: torch.distributed.checkpoint loads into the entries a fresh optimizer's state_dict holds, so they
        must all be there. torch.optim.AdamW and ours read such an entry as a fresh start; torch.optim.SGD reads a
        momentum buffer as "stepped before", which changes that parameter's first step when dampening != 0."""
        state_dict = super().state_dict()
        counts = {}
        for buckets in self._buckets:
            for bucket in buckets:
                for p, count in zip(bucket.params, bucket.steps.values(), strict=True):
                    counts[id(p)] = count
        index_to_count = {index: counts[key] for key, index in _torch_param_indices(self.param_groups).items()}
        state_dict["state"] = {
            index: _with_count(entries, index_to_count.get(index)) for index, entries in state_dict["state"].items()
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
                        bucket.zero_state(name)  # a checkpoint taken before this state existed
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

        torch.optim's load_state_dict replaces the param groups and the state first, so an unfit state_dict would
        leave a half-loaded optimizer: one of another optimizer (groups lacking this one's hyperparameters) would
        raise KeyError at the next step, one of another parameter layout would raise from a copy after part of the
        state was loaded, and one of torch.optim.SGD / AdamW (no gamma, mu) would break the per-objective path."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), list):
            raise ValueError(
                f"{name}: state_dict must be a dict as returned by state_dict(), got {describe(state_dict)}"
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
            optional = ("gamma", "mu", *_TORCH_SETSTATE_DEFAULTS, *self._torch_group_defaults)
            optional += tuple(self._torch_group_forced)
            missing = [key for key in self.defaults if key not in saved and key not in optional]
            if missing:
                raise ValueError(
                    f"{name}: state_dict's param_groups[{g}] lacks the hyperparameters {missing}: it was written by "
                    "another optimizer"
                )
            merged = {**saved, "params": group["params"]}
            # Keys newer than the checkpoint's torch.optim (maximize, amsgrad, nesterov, ...) get the value that
            # torch.optim's __setstate__ gives them, as torch.optim.AdamW / SGD load such a checkpoint.
            for key, value in _TORCH_SETSTATE_DEFAULTS.items():
                if key in self.defaults:
                    merged.setdefault(key, value)
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
                    if key != "step" and is_dtensor(p) and not is_dtensor(value):
                        raise ValueError(
                            f"{name}: state_dict's state {key!r} of parameter {i} of param_groups[{g}] is a plain "
                            "tensor but the parameter is a DTensor (sharded): load sharded state as DTensors, e.g. "
                            "through torch.distributed.checkpoint's get_state_dict / set_state_dict"
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
        on bit-identically: the diagnostics switch, the distributed setting and the GradScaler setting (amp.py; the
        step counts are in the state).

        torch.optim pickles no more than that; ours must also rebuild the buckets, which hold the parameters' and
        the state's storage, keep host flags and hooks on the parameters, and cannot be copied as they are: a copy
        whose parameters were not views of its own flat buffers would update buffers nothing reads."""
        state = super().__getstate__()
        state[_COPY_KEY] = {
            "diagnostics": self.diagnostics,
            "distributed": _DistributedSetting(self._dist_group, *self._dist_args),
            "step_unscales": step_unscales(self),
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
        self._host = HostState()
        self._lr_tensors = {}
        self.diagnostics = bool(extra["diagnostics"])
        set_step_unscales(self, extra.get("step_unscales", True))  # the GradScaler setting (amp.py)
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


# state_dict key of the per-bucket step flags (see MIMOOptimizer.state_dict).
_FLAGS_KEY = "mimo_step_flags"
# __getstate__ key of what a copy needs besides torch.optim's state (see MIMOOptimizer.__getstate__).
_COPY_KEY = "_mimo_copy"
# Attributes of MIMOOptimizer.__init__ besides torch.optim's, shared by a shallow copy.
_HOST_ATTRIBUTES = ("_dist_group", "_dist_args", "_buckets", "_host", "_lr_tensors", "diagnostics")


# The algorithm keys torch.optim.AdamW's and SGD's __setstate__ fill in a loaded group that lacks them (they were added
# to torch.optim after its first release), with torch's values; each applies where the optimizer has the key.
_TORCH_SETSTATE_DEFAULTS = {"amsgrad": False, "maximize": False, "nesterov": False}


def _torch_param_indices(param_groups: list[dict]) -> dict[int, int]:
    """``id(parameter) -> index`` as torch.optim's state_dict numbers the parameters: in group order, a parameter
    listed again (``param_groups.extend(param_groups)``) keeping the index of its first occurrence."""
    indices: dict[int, int] = {}
    start = 0
    for group in param_groups:
        for i, p in enumerate(group["params"], start):
            indices.setdefault(id(p), i)
        start += len(group["params"])
    return indices


def _with_count(entries, count: torch.Tensor | None):
    """A packed state entry with this optimizer's step count in place of the shared one. An entry torch.optim packs
    that is not a parameter's (a key a hook put in ``opt.state``, kept as torch.optim keeps it) is left as it is."""
    if count is None or not isinstance(entries, dict):
        return entries
    return {**entries, "step": count} if "step" in entries else dict(entries)


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
