"""Build of mimo_ext: one shared library of torch ops, with the CUDA kernels whenever a CUDA toolkit and a CUDA
build of torch are present (a GPU need not be visible).

Switches (environment variables):
  FORCE_CUDA=1          build the CUDA kernels, and fail if no CUDA toolkit or CUDA torch is found
  MIMO_EXT_FORCE_CPU=1  build the CPU kernels only, even where CUDA is available
  TORCH_CUDA_ARCH_LIST  GPU architectures, as for any torch extension; when unset and no GPU is visible, the
                        default of csrc/build_flags.txt (A100, H100/H200, and PTX that newer GPUs compile at load time)
  MAX_JOBS              parallel compile jobs (ninja)
  MIMO_EXT_DEBUG=1      -O0 -g host and device code

The sources are listed in csrc/sources.txt and the compiler flags in csrc/build_flags.txt, both read by
CMakeLists.txt too.
"""

import os
import subprocess
import sys
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent.resolve()


def read_sections(name: str, sections: tuple[str, ...]) -> dict[str, list[str]]:
    """csrc/<name> as {section: lines}: "[section]" lines, each followed by one entry per line, "#" comments.
    CMakeLists.txt reads the same files the same way, and refuses the same mistakes: an unknown or missing section,
    an entry before any section."""
    found: dict[str, list[str]] = {}
    current = None
    for raw in (ROOT / "csrc" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            if current not in sections:
                sys.exit(f"mimo_ext: csrc/{name}: unknown section [{current}] (known: {', '.join(sections)})")
            found.setdefault(current, [])
        elif current is None:
            sys.exit(f"mimo_ext: csrc/{name}: '{line}' is not under a section")
        else:
            found[current].append(line)
    missing = [section for section in sections if section not in found]
    if missing:
        sys.exit(f"mimo_ext: csrc/{name}: no section {', '.join(f'[{section}]' for section in missing)}")
    return found


SOURCES = read_sections("sources.txt", ("cpu", "cuda"))
FLAGS = read_sections(
    "build_flags.txt",
    (
        "cxx_optimize",
        "cxx_debug",
        "cxx_openmp",
        "cxx_fp_model",
        "cxx_gcc",
        "nvcc_optimize",
        "nvcc_debug",
        "nvcc_half_defines",
        "cuda_arch_default",
    ),
)


def compiler_is_gcc() -> bool:
    """Whether the C++ compiler torch will call (CXX, default c++) is GCC: it takes GCC-only --param flags."""
    try:
        version = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True)
    except OSError:
        return False
    return "Free Software Foundation" in version.stdout and "clang" not in version.stdout


def flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def decide_cuda() -> tuple[bool, str]:
    """Whether to compile the CUDA kernels, and why. Decided from the toolchain, never from a visible GPU."""
    if flag("MIMO_EXT_FORCE_CPU"):
        return False, "MIMO_EXT_FORCE_CPU=1"
    toolkit = CUDA_HOME is not None and Path(CUDA_HOME, "bin", "nvcc").exists()
    cuda_torch = torch.version.cuda is not None
    if flag("FORCE_CUDA"):
        if not (toolkit and cuda_torch):
            sys.exit(
                "mimo_ext: FORCE_CUDA=1 but "
                + ("torch is a CPU-only build" if not cuda_torch else f"no nvcc under CUDA_HOME={CUDA_HOME}")
                + ". Set CUDA_HOME to the toolkit (e.g. /usr/local/cuda) and install a CUDA build of torch."
            )
        return True, "FORCE_CUDA=1"
    if not cuda_torch:
        return False, "torch is a CPU-only build"
    if not toolkit:
        return False, f"no CUDA toolkit found (CUDA_HOME={CUDA_HOME}); set CUDA_HOME to build the CUDA kernels"
    return True, f"CUDA toolkit at {CUDA_HOME} and torch built for CUDA {torch.version.cuda}"


def write_build_info(with_cuda: bool, arch_list: str | None) -> None:
    """Record what the library was built against, so that importing it beside another torch fails clearly."""
    (ROOT / "mimo_ext" / "_build_info.py").write_text(
        "# Written by setup.py at build time; do not edit.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
        f"CUDA_VERSION = {torch.version.cuda if with_cuda else None!r}\n"
        f"CUDA_ARCH_LIST = {arch_list!r}\n"
    )


def make_extension():
    with_cuda, reason = decide_cuda()
    debug = flag("MIMO_EXT_DEBUG")
    # Host flags (csrc/build_flags.txt): optimisation or debug, OpenMP, the FP model, and GCC's own.
    cxx_flags = FLAGS["cxx_debug" if debug else "cxx_optimize"] + FLAGS["cxx_openmp"] + FLAGS["cxx_fp_model"]
    if compiler_is_gcc():
        cxx_flags += FLAGS["cxx_gcc"]
    arch_list = None
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(FLAGS["cuda_arch_default"])
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPU's")
        # torch passes the half defines to every nvcc call itself; any it stops passing is added here.
        torch_nvcc_flags = getattr(torch.utils.cpp_extension, "COMMON_NVCC_FLAGS", [])
        nvcc_flags = [f for f in FLAGS["nvcc_half_defines"] if f not in torch_nvcc_flags]
        nvcc_flags += FLAGS["nvcc_debug" if debug else "nvcc_optimize"]
        extension = CUDAExtension(
            name="mimo_ext._C",
            sources=SOURCES["cpu"] + SOURCES["cuda"],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=list(FLAGS["cxx_openmp"]),
        )
    else:
        extension = CppExtension(
            name="mimo_ext._C",
            sources=SOURCES["cpu"],
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=list(FLAGS["cxx_openmp"]),
        )
    print(
        f"mimo_ext build: CUDA kernels {'ON' if with_cuda else 'OFF'} ({reason})"
        + (f"; TORCH_CUDA_ARCH_LIST={arch_list}" if with_cuda else "")
        + f"; torch {torch.__version__}",
        flush=True,
    )
    write_build_info(with_cuda, arch_list)
    return extension


setup(
    packages=find_packages(include=["mimo_ext", "mimo_ext.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension},
)
