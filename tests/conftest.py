"""Test-suite set-up: which eagle_fast is tested, and on which backends.

* The *installed* package is tested.  ``python -m pytest`` from the repository
  root puts the root on ``sys.path``, where the source tree's ``eagle_fast``
  (without its compiled kernels) would shadow the installed one; the root is
  taken off ``sys.path`` here, before anything imports eagle_fast.  (If no
  installed copy exists the source tree is used, and tests that require the
  compiled backend say so.)
* This folder goes on ``sys.path`` so that test modules, imported with
  ``--import-mode=importlib``, can ``from reference import ...``.
* The suite's heads and drafters are sized around 256 KiB (kilobytes, not the
  megabytes of eagle_fast._threads.PARALLEL_MIN_WORK_BYTES): an autouse
  fixture lowers the shared work threshold so that their ``num_threads=2``
  calls still run the parallel kernels (two threads from 256 KiB of work);
  tests/test_threads.py checks the rule and the production value.
* Every test runs once per backend: compiled x86-64-v3, compiled baseline,
  python (an autouse fixture parametrized over them).  A compiled level that
  is not available is skipped -- unless ``EAGLE_FAST_REQUIRE_COMPILED=1``,
  where a missing compiled baseline (or a missing x86-64-v3 kernel on a CPU
  that has x86-64-v3) fails.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def _is_repo_root(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == REPO_ROOT
    except OSError:
        return False


_removed = [p for p in sys.path if _is_repo_root(p)]
sys.path[:] = [p for p in sys.path if not _is_repo_root(p)]
if "eagle_fast" not in sys.modules and importlib.util.find_spec("eagle_fast") is None:
    sys.path.extend(_removed)  # not installed: test the source tree
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

with warnings.catch_warnings(record=True) as _import_warnings:
    warnings.simplefilter("always")
    import eagle_fast  # noqa: E402
from hypothesis import settings  # noqa: E402

from support import TEST_MIN_WORK_BYTES, skip_or_fail_without_compiled  # noqa: E402
from eagle_fast import _backend, _threads  # noqa: E402

settings.register_profile("eagle_fast", deadline=None, max_examples=40, print_blob=True)
settings.load_profile("eagle_fast")


@pytest.fixture(autouse=True)
def small_parallel_threshold(monkeypatch):
    """Run the suite's small heads on the threads they ask for (see above)."""
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK_BYTES", TEST_MIN_WORK_BYTES)


BACKEND_PARAMS = [
    pytest.param(("compiled", "x86-64-v3"), id="compiled-x86-64-v3"),
    pytest.param(("compiled", "baseline"), id="compiled-baseline"),
    pytest.param(("python", None), id="python"),
]


@pytest.fixture(autouse=True, params=BACKEND_PARAMS)
def active_backend(request):
    """Make the parametrized backend the active one for the test (heads created
    in it use that backend); restore the previous one afterwards.

    Yields the backend's (name, simd_level), or None for backend-independent
    tests."""
    saved = _backend.active()
    if request.param is None:
        yield None
        _backend._active = saved
        return
    name, simd_level = request.param
    if name == "compiled":
        skip_or_fail_without_compiled(simd_level)
    _backend.use(name, simd_level)
    try:
        yield request.param
    finally:
        _backend._active = saved


def pytest_report_header(config):
    info = eagle_fast.build_info()
    return [
        f"eagle_fast: {eagle_fast.__file__}",
        f"eagle_fast default backend: {info['backend']} ({info['simd_level']}), "
        f"levels available: {info['simd_levels_available']}, openmp={info['openmp']}, "
        f"max_threads={info['max_threads']}",
    ] + _missing_kernels_lines()


def _missing_kernels_lines() -> list[str]:
    reason = _backend.missing_compiled_reason()
    lines = [] if reason is None else [f"eagle_fast compiled kernels unavailable: {reason}"]
    return lines + [f"eagle_fast import warning: {w.message}" for w in _import_warnings
                    if reason is None or reason not in str(w.message)]


# On CI (CI=true) every optional test dependency is installed by .ci/run, so a
# test skipped because one fails to import (pytest.importorskip) would hide a
# broken install: it fails there instead.
_OPTIONAL_IMPORT_SKIP = "could not import"


def _fail_optional_import_skips_on_ci(report) -> None:
    if not report.skipped or os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    if _OPTIONAL_IMPORT_SKIP in reason:
        report.outcome = "failed"
        report.longrepr = f"CI=true but an optional test dependency is missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_optional_import_skips_on_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole module here
    _fail_optional_import_skips_on_ci(outcome.get_result())
