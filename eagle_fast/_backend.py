"""Which implementation runs: the compiled kernels or the pure-Python fallback.

The compiled backend is a pair of extension modules, ``_draft_kernel`` (fused
fast path, built for a baseline CPU and, on x86-64, again for x86-64-v3) and
``_spec_kernel`` (bit-exact spec path).  The fallback pair ``_draft_py`` /
``_spec_py`` has the same API.  Selection happens at import:

* ``EAGLE_FAST_BACKEND``: unset / ``auto`` -> compiled when built, else python
  with a RuntimeWarning that says why the kernels are missing;
  ``python`` -> the fallback, silently; ``compiled`` -> fail (saying why) if
  the kernels are missing.
* ``EAGLE_FAST_SIMD``: unset / ``auto`` -> x86-64-v3 when this CPU has it;
  ``baseline`` -> the portable build; ``x86-64-v3`` -> fail if unavailable.

Why kernels can be missing (:func:`missing_compiled_reason` tells which):
the package was imported from a source checkout (the folder Python runs in
comes first on ``sys.path`` and hides the installed copy; the source tree
has no compiled modules), the wheel was built without them (the C compiler
failed -- pip then installs a pure-Python wheel and says so only with
``pip -v`` -- or ``EAGLE_FAST_PURE_PYTHON=ON``), or they exist but do not
load.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path
from types import FrameType, ModuleType
from typing import Optional

BACKENDS = ("compiled", "python")
SIMD_LEVELS = ("x86-64-v3", "baseline")


# Kernel modules beyond the draft head, by concern: (compiled module, its
# fallback, whether the compiled module also has an x86-64-v3 build named
# <module>_v3).  Module paths are relative to the eagle_fast package; each
# fallback lives beside the kernel it replaces.
KERNEL_MODULES: dict[str, tuple[str, str, bool]] = {
    # per-row top-k of eagle_fast.speculative.dynamic_tree()
    "tree": ("speculative._tree_kernel", "speculative._tree_py", True),
    # tree verification (eagle_fast.speculative.verify)
    "verify": ("speculative._verify_kernel", "speculative._verify_py", True),
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


PACKAGE_DIR = Path(__file__).resolve().parent

def _compiled_import_error() -> Optional[ImportError]:
    """None when both compiled modules import, else the ImportError."""
    try:
        _import("_draft_kernel")
        _import("_spec_kernel")
    except ImportError as exc:
        return exc
    return None


def compiled_available() -> bool:
    return _compiled_import_error() is None


def source_checkout() -> Optional[Path]:
    """The source checkout this package was imported from -- the folder
    holding ``eagle_fast/`` beside ``CMakeLists.txt`` and ``src/`` -- or None
    (an installed copy)."""
    root = PACKAGE_DIR.parent
    if (root / "CMakeLists.txt").is_file() and (root / "src" / "_draft_kernel.pyx").is_file():
        return root
    return None


def _resolved(entry: str) -> Optional[Path]:
    try:
        return Path(entry or os.getcwd()).resolve()
    except (OSError, RuntimeError):
        return None


def _shadowed_copy(checkout: Path) -> Optional[Path]:
    """Another eagle_fast on sys.path behind ``checkout`` (the installed copy
    the checkout hides), or None."""
    paths = [entry for entry in sys.path
             if isinstance(entry, str) and _resolved(entry) != checkout]
    try:
        spec = PathFinder.find_spec(__package__, paths)
    except (ImportError, ValueError, OSError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    location = Path(list(spec.submodule_search_locations)[0]).resolve()
    return None if location == PACKAGE_DIR else location


def missing_compiled_reason(error: Optional[ImportError] = None) -> Optional[str]:
    """Why the compiled kernels are not available, and what to do about it;
    None when they are.  ``error``: the ImportError they raised, if known."""
    if error is None:
        error = _compiled_import_error()
        if error is None:
            return None
    checkout = source_checkout()
    missing = isinstance(error, ModuleNotFoundError) and (error.name or "").startswith(
        f"{__package__}.")
    if checkout is not None and missing:
        installed = _shadowed_copy(checkout)
        hides = (f"; it hides the installed copy in {installed}" if installed is not None
                 else "; no installed copy was found behind it")
        return (f"eagle_fast is imported from the source tree in {checkout} (Python "
                "looks in the current or the script's folder first), which has no "
                f"compiled kernels{hides}. Install it (pip install .) and run Python "
                "from another folder; python -m pytest from the repository root tests "
                "the installed copy.")
    if missing:
        return (f"eagle_fast in {PACKAGE_DIR} was installed without its compiled "
                "kernels: the C compiler failed or was missing when it was built (pip "
                "then installs a pure-Python wheel and shows why only with -v), or it "
                "was built with EAGLE_FAST_PURE_PYTHON=ON. Install a C compiler (gcc "
                "or clang; pip brings CMake) and reinstall with pip install -v "
                "--force-reinstall --no-deps . to see the build log.")
    return (f"eagle_fast's compiled kernels in {PACKAGE_DIR} do not load ({error}); "
            "reinstall it (pip install -v . shows the build log).")


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that points a warning issued by this module's
    caller at the first frame outside eagle_fast (the user's import), counting
    frames the way ``warnings`` does (it skips importlib's own)."""
    level = 2
    frame: Optional[FrameType] = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not ("importlib" in name and "_bootstrap" in name):
            path = _resolved(name)
            if path is None or PACKAGE_DIR not in path.parents:
                break
            level += 1
        frame = frame.f_back
    return level


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
            f"the compiled backend is not available: {missing_compiled_reason(exc)} "
            "(EAGLE_FAST_BACKEND=python uses the pure-Python fallback.)"
        ) from None
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
        error = _compiled_import_error()
        requested = "compiled" if error is None else "python"
        if error is not None:
            warnings.warn(f"{missing_compiled_reason(error)} Running the pure-Python "
                          "fallback, several times slower. Set EAGLE_FAST_BACKEND=python "
                          "to choose the fallback and silence this warning.",
                          RuntimeWarning, stacklevel=_caller_stacklevel())
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
