"""Which implementation runs: the compiled kernels or the pure-Python fallback.

The compiled backend is a pair of extension modules, ``_draft_kernel`` (fused
fast path, built for a baseline CPU and, on x86-64, again for x86-64-v3) and
``_spec_kernel`` (bit-exact spec path).  The fallback pair ``_draft_py`` /
``_spec_py`` has the same API.  Selection happens at import:

* ``EAGLE_FAST_BACKEND``: unset / ``auto`` -> compiled when built, else python;
  ``python`` -> force the fallback; ``compiled`` -> fail if it is missing.
* ``EAGLE_FAST_SIMD``: unset / ``auto`` -> x86-64-v3 when this CPU has it;
  ``baseline`` -> the portable build; ``x86-64-v3`` -> fail if unavailable.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Optional

BACKENDS = ("compiled", "python")
SIMD_LEVELS = ("x86-64-v3", "baseline")


# Kernel modules beyond the draft head, by concern: (compiled module, its
# fallback, whether the compiled module also has an x86-64-v3 build named
# <module>_v3).  Module paths are relative to the eagle_fast package; each
# fallback lives beside the kernel it replaces.
KERNEL_MODULES: dict[str, tuple[str, str, bool]] = {
    # per-row top-k of eagle_fast.speculative.dynamic_tree
    "tree": ("speculative._tree_kernel", "speculative._tree_py", True),
    # EAGLE draft models' decoder-layer ops (eagle_fast.models).
    "layers": ("models._layer_kernel", "models._layers_py", True),
}


@dataclass(frozen=True)
class Backend:
    name: str  # "compiled" or "python"
    simd_level: str  # "x86-64-v3", "baseline" or "none" (python)
    draft: ModuleType  # KernelHead, max_threads(), OPENMP, SIMD, ...
    spec: ModuleType  # spec_forward()

    def module(self, concern: str) -> ModuleType:
        """This backend's kernel module for ``concern`` (a key of
        :data:`KERNEL_MODULES`), imported on first use."""
        compiled, fallback, has_v3 = KERNEL_MODULES[concern]
        if self.name == "python":
            return _import(fallback)
        if has_v3 and self.simd_level == "x86-64-v3":
            return _import(compiled + "_v3")
        return _import(compiled)


def _import(module: str) -> ModuleType:
    return importlib.import_module(f"{__package__}.{module}")


def compiled_available() -> bool:
    try:
        _import("_draft_kernel")
        _import("_spec_kernel")
    except ImportError:
        return False
    return True


def simd_levels_available() -> list[str]:
    """Compiled kernel levels this build has and this CPU can run, best first."""
    if not compiled_available():
        return []
    levels = ["baseline"]
    try:
        _import("_draft_kernel_v3")
    except ImportError:
        return levels
    if _import("_draft_kernel").cpu_has_x86_64_v3():
        levels.insert(0, "x86-64-v3")
    return levels


def load(name: str, simd_level: Optional[str] = None) -> Backend:
    """Load backend ``name`` (``simd_level`` None = best available)."""
    if name == "python":
        return Backend("python", "none", _import("_draft_py"), _import("_spec_py"))
    if name != "compiled":
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    try:
        spec = _import("_spec_kernel")
        _import("_draft_kernel")
    except ImportError as exc:
        raise ImportError(
            "eagle_fast's compiled extension is not built; reinstall with a C compiler "
            f"(pip install .), or use EAGLE_FAST_BACKEND=python ({exc})"
        ) from exc
    levels = simd_levels_available()
    if simd_level is None:
        simd_level = levels[0]
    elif simd_level not in SIMD_LEVELS:
        raise ValueError(f"unknown SIMD level {simd_level!r}; expected one of {SIMD_LEVELS}")
    elif simd_level not in levels:
        raise ImportError(f"SIMD level {simd_level!r} is not available here (have {levels})")
    module = "_draft_kernel_v3" if simd_level == "x86-64-v3" else "_draft_kernel"
    return Backend("compiled", simd_level, _import(module), spec)


def _from_environment() -> Backend:
    requested = os.environ.get("EAGLE_FAST_BACKEND", "auto").strip().lower() or "auto"
    simd = os.environ.get("EAGLE_FAST_SIMD", "auto").strip().lower() or "auto"
    simd_level = None if simd == "auto" else simd
    if requested == "auto":
        requested = "compiled" if compiled_available() else "python"
    if requested not in BACKENDS:
        raise ImportError(
            f"EAGLE_FAST_BACKEND={requested!r} is not one of 'auto', 'compiled', 'python'"
        )
    if simd_level is not None and simd_level not in SIMD_LEVELS:
        raise ImportError(
            f"EAGLE_FAST_SIMD={simd!r} is not one of 'auto', 'x86-64-v3', 'baseline'"
        )
    return load(requested, simd_level)


_active: Backend = _from_environment()


def active() -> Backend:
    return _active


def use(name: str, simd_level: Optional[str] = None) -> Backend:
    """Switch the backend for heads created from now on (tests, benchmarks)."""
    global _active
    _active = load(name, simd_level)
    return _active
