"""Helpers shared by the tests (imported by conftest.py first, after it has
fixed sys.path, so the eagle_fast imported here is the one under test)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from eagle_fast import _backend, _threads

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

# What eagle_fast selected by itself at import (EAGLE_FAST_BACKEND / _SIMD),
# before any test switched backends.
BACKEND_AT_IMPORT = _backend.active()

# The shared work threshold as eagle_fast ships it (conftest.py lowers it for
# the suite; tests/test_threads.py checks this value's rule).
PRODUCTION_MIN_WORK_BYTES = _threads.PARALLEL_MIN_WORK_BYTES
TEST_MIN_WORK_BYTES = 128 * 1024   # the suite's, per thread: two threads from 256 KiB


def require_compiled() -> bool:
    """EAGLE_FAST_REQUIRE_COMPILED=1: a missing compiled backend is a failure."""
    return os.environ.get("EAGLE_FAST_REQUIRE_COMPILED", "").strip() == "1"


def _cpu_flags_from_proc() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_x86_64_v3() -> bool:
    """Whether this CPU runs x86-64-v3 code: asks the compiled kernel when it
    loads, else /proc/cpuinfo."""
    try:
        _backend.load("compiled", "baseline")
        from eagle_fast import _draft_kernel
        return bool(_draft_kernel.cpu_has_x86_64_v3())
    except ImportError:
        pass
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return {"avx2", "fma", "f16c", "bmi2"} <= _cpu_flags_from_proc()


def compiled_unavailable_reason(simd_level: Optional[str] = "baseline") -> Optional[str]:
    """None when the compiled backend at ``simd_level`` loads here, else why not."""
    try:
        _backend.load("compiled", simd_level)
    except (ImportError, ValueError) as exc:
        return f"compiled backend ({simd_level}) unavailable: {exc}"
    return None


def skip_or_fail_without_compiled(simd_level: str = "baseline") -> None:
    """Skip the calling test when the compiled backend at ``simd_level`` is
    missing -- or fail it, when EAGLE_FAST_REQUIRE_COMPILED=1 and this
    machine should have it (x86-64-v3 only on CPUs that have x86-64-v3)."""
    reason = compiled_unavailable_reason(simd_level)
    if reason is None:
        return
    required = simd_level == "baseline" or cpu_has_x86_64_v3()
    if require_compiled() and required:
        pytest.fail(f"EAGLE_FAST_REQUIRE_COMPILED=1 but {reason}")
    if _backend.missing_compiled_reason() is not None:
        # The long story is in the report header, once.
        reason = f"compiled backend ({simd_level}) unavailable (see the report header)"
    pytest.skip(reason)


# For tests that do not depend on the active backend (subprocess and
# environment checks): run them once, on whatever backend is active.
backend_independent = pytest.mark.parametrize(
    "active_backend", [pytest.param(None, id="any-backend")], indirect=True)


def random_head(rng: np.random.Generator, d_model: int, d_proj: int, vocab: int,
                dtype=np.float64, lm_scale: float = 1.0):
    """Random weights with O(1) pre-activations and logits."""
    W = (rng.standard_normal((d_proj, d_model)) / np.sqrt(d_model)).astype(dtype)
    b = (rng.standard_normal(d_proj) * 0.1).astype(dtype)
    L = (rng.standard_normal((vocab, d_proj)) * (lm_scale / np.sqrt(d_proj))).astype(dtype)
    return W, b, L
