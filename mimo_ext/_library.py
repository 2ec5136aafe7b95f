"""Loads the compiled operator library (mimo_ext/_C*.so), or says what to do when it cannot."""

from __future__ import annotations

from pathlib import Path

import torch

_REBUILD = (
    "Rebuild it against the torch you run: from the repository root, "
    "`pip install --no-build-isolation .` (see README.md, 'Install')."
)


def load() -> None:
    """Registers the torch.ops.mimo_ext operators by loading the shared library built by setup.py."""
    here = Path(__file__).parent
    candidates = sorted(here.glob("_C*.so")) + sorted(here.glob("_C*.pyd"))
    if not candidates:
        raise ImportError(f"mimo_ext: the compiled library (mimo_ext/_C*.so) is missing from {here}. {_REBUILD}")
    try:
        from . import _build_info
    except ImportError as error:
        raise ImportError(f"mimo_ext: {here}/_build_info.py is missing: the build is incomplete. {_REBUILD}") from error
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"mimo_ext was built against torch {_build_info.TORCH_VERSION} but torch {torch.__version__} is "
            f"installed; its compiled library only works with the torch it was built against. {_REBUILD}"
        )
    try:
        torch.ops.load_library(str(candidates[0]))
    except OSError as error:
        raise ImportError(f"mimo_ext: cannot load {candidates[0].name}: {error}. {_REBUILD}") from error


def built_with_cuda() -> bool:
    """Whether the CUDA kernels were compiled into the library."""
    from . import _build_info

    return bool(_build_info.WITH_CUDA)
