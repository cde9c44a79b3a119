"""Backend selection, build information and the kernel modules' shared API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import eagle_fast
from eagle_fast import _backend
from reference import float64_reference, spec_reference
from support import (
    BACKEND_AT_IMPORT,
    REPO_ROOT,
    backend_independent,
    compiled_unavailable_reason,
    cpu_has_x86_64_v3,
    random_head,
    require_compiled,
    skip_or_fail_without_compiled,
)

BUILD_INFO_KEYS = {"backend", "simd_level", "simd_levels_available", "simd", "openmp",
                   "max_threads", "compiler", "compile_flags"}

ENV_VARS = ("EAGLE_FAST_BACKEND", "EAGLE_FAST_SIMD")


def run_python(code: str, tmp_path: Path, **env_changes: str | None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this one's executable) with the
    backend variables cleared and then ``env_changes`` applied.  It runs in
    ``tmp_path`` so that the repository's source tree cannot shadow the
    installed package, and sees the same eagle_fast as this session."""
    env = dict(os.environ)
    for name in ENV_VARS:
        env.pop(name, None)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    package_parent = str(Path(eagle_fast.__file__).resolve().parents[1])
    env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def run_json(code: str, tmp_path: Path, **env_changes: str | None):
    proc = run_python(code, tmp_path, **env_changes)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# The parametrized backend is really the one in use.
# ---------------------------------------------------------------------------

def test_active_backend_is_the_parametrized_one(active_backend):
    name, simd_level = active_backend
    assert eagle_fast.backend == name
    info = eagle_fast.build_info()
    assert info["backend"] == name
    assert info["simd_level"] == (simd_level if name == "compiled" else "none")
    rng = np.random.default_rng(0)
    head = eagle_fast.DraftHead(*random_head(rng, 4, 3, 5))
    assert head.backend == name
    assert name in repr(head)


def test_build_info_keys_and_types(active_backend):
    name, simd_level = active_backend
    info = eagle_fast.build_info()
    assert set(info) == BUILD_INFO_KEYS
    assert isinstance(info["simd"], str)
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["max_threads"], int) and info["max_threads"] >= 1
    assert isinstance(info["compiler"], str)
    assert isinstance(info["compile_flags"], str)
    assert info["simd_levels_available"] == _backend.simd_levels_available()
    if name == "python":
        assert info["simd_level"] == "none"
        assert info["openmp"] is False
        assert info["max_threads"] == 1
    else:
        assert info["simd_level"] in info["simd_levels_available"]
        assert info["compiler"] not in ("", "none")
        if not info["openmp"]:
            assert info["max_threads"] == 1
    if simd_level == "x86-64-v3":
        assert "x86-64-v3" in info["compile_flags"]
        assert "avx2" in info["simd"].lower()
    if simd_level == "baseline":
        assert "x86-64-v3" not in info["compile_flags"]


def test_head_keeps_the_backend_it_was_created_with(active_backend):
    rng = np.random.default_rng(1)
    weights = random_head(rng, 6, 5, 9)
    head = eagle_fast.DraftHead(*weights)
    other = "python" if active_backend[0] == "compiled" else "compiled"
    if other == "compiled" and compiled_unavailable_reason() is not None:
        pytest.skip("compiled backend unavailable")
    hidden = rng.standard_normal(6)
    before = head.predict(hidden, return_probs=True)
    _backend.use(other)
    assert eagle_fast.backend == other
    assert head.backend == active_backend[0]
    after = head.predict(hidden, return_probs=True)
    np.testing.assert_array_equal(before.probs, after.probs)
    assert eagle_fast.DraftHead(*weights).backend == other


@backend_independent
def test_simd_levels_available_is_consistent():
    levels = _backend.simd_levels_available()
    assert all(level in _backend.SIMD_LEVELS for level in levels)
    assert levels == [lvl for lvl in _backend.SIMD_LEVELS if lvl in levels]  # best first
    assert bool(levels) == _backend.compiled_available()
    if levels:
        assert levels[-1] == "baseline"
        assert _backend.load("compiled").simd_level == levels[0]
        for level in levels:
            loaded = _backend.load("compiled", level)
            assert (loaded.name, loaded.simd_level) == ("compiled", level)
    python = _backend.load("python")
    assert (python.name, python.simd_level) == ("python", "none")


@backend_independent
def test_unknown_backend_or_level_is_an_error():
    saved = _backend.active()
    with pytest.raises(ValueError, match="backend"):
        _backend.use("fortran")
    if _backend.compiled_available():
        with pytest.raises(ValueError, match="SIMD"):
            _backend.use("compiled", "avx512")
    assert _backend.active() is saved


# ---------------------------------------------------------------------------
# EAGLE_FAST_REQUIRE_COMPILED=1: the compiled, installed package is tested.
# ---------------------------------------------------------------------------

@backend_independent
def test_compiled_backend_is_the_default_when_required(tmp_path):
    if not require_compiled():
        pytest.skip("EAGLE_FAST_REQUIRE_COMPILED is not 1")
    if os.environ.get("EAGLE_FAST_BACKEND", "").strip().lower() == "python":
        pytest.skip("EAGLE_FAST_BACKEND=python forces the fallback")
    # As selected when this session imported eagle_fast...
    assert BACKEND_AT_IMPORT.name == "compiled", (
        f"eagle_fast selected the {BACKEND_AT_IMPORT.name!r} backend at import "
        f"({eagle_fast.__file__})")
    # ... and by a fresh import with this environment.
    env = {name: os.environ.get(name) for name in ENV_VARS}
    info = run_json("import json, eagle_fast; "
                    "print(json.dumps([eagle_fast.backend, eagle_fast.build_info()]))",
                    tmp_path, **env)
    assert info[0] == "compiled"
    assert info[1]["backend"] == "compiled"
    simd = os.environ.get("EAGLE_FAST_SIMD", "auto").strip().lower() or "auto"
    if simd == "auto" and cpu_has_x86_64_v3():
        assert info[1]["simd_level"] == "x86-64-v3"


@backend_independent
def test_installed_package_is_tested_when_required():
    if not require_compiled():
        pytest.skip("EAGLE_FAST_REQUIRE_COMPILED is not 1")
    package_dir = Path(eagle_fast.__file__).resolve().parent
    assert REPO_ROOT not in (package_dir, *package_dir.parents), (
        f"tests import eagle_fast from the source tree ({package_dir}), not the "
        "installed package")
    skip_or_fail_without_compiled("baseline")
    modules = ["_draft_kernel", "_spec_kernel"]
    if cpu_has_x86_64_v3():
        skip_or_fail_without_compiled("x86-64-v3")
        modules.append("_draft_kernel_v3")
    import importlib
    for module in modules:
        path = importlib.import_module(f"eagle_fast.{module}").__file__
        assert path is not None and path.endswith((".so", ".pyd")), (module, path)
        assert Path(path).resolve().parent == package_dir


# ---------------------------------------------------------------------------
# Environment variables, in fresh interpreters.
# ---------------------------------------------------------------------------

SUBPROCESS_PREDICT = """
import json, numpy as np, eagle_fast
rng = np.random.default_rng(5)
W = rng.standard_normal((6, 8)); b = rng.standard_normal(6); L = rng.standard_normal((11, 6))
h = rng.standard_normal(8)
r = eagle_fast.DraftHead(W, b, L).predict(h, top_k=3, return_probs=True)
spec = eagle_fast.eagle_draft_from_hidden(h, W, b, L, 0.7)
print(json.dumps({"backend": eagle_fast.backend, "info": eagle_fast.build_info(),
                  "tokens": r.tokens.tolist(), "probs": r.probs.tolist(), "spec": spec}))
"""


def _subprocess_inputs():
    rng = np.random.default_rng(5)
    W = rng.standard_normal((6, 8))
    b = rng.standard_normal(6)
    L = rng.standard_normal((11, 6))
    h = rng.standard_normal(8)
    return h, W, b, L


@backend_independent
def test_env_backend_python_forces_the_fallback(tmp_path):
    out = run_json(SUBPROCESS_PREDICT, tmp_path, EAGLE_FAST_BACKEND="python")
    assert out["backend"] == "python"
    assert out["info"]["backend"] == "python"
    assert out["info"]["simd_level"] == "none"
    h, W, b, L = _subprocess_inputs()
    ref = float64_reference(h, W, b, L)
    np.testing.assert_allclose(out["probs"], ref["probs"], rtol=1e-12, atol=1e-15)
    assert out["tokens"] == list(np.argsort(-ref["logits"], kind="stable")[:3])
    assert out["spec"] == spec_reference(h, W, b, L, 0.7)


@backend_independent
@pytest.mark.parametrize("value", ["PYTHON", " python "])
def test_env_backend_is_case_and_space_insensitive(tmp_path, value):
    out = run_json("import json, eagle_fast; print(json.dumps(eagle_fast.backend))",
                   tmp_path, EAGLE_FAST_BACKEND=value)
    assert out == "python"


@backend_independent
def test_env_backend_auto_and_empty_select_the_best(tmp_path):
    expected = "compiled" if _backend.compiled_available() else "python"
    for value in ("auto", ""):
        out = run_json("import json, eagle_fast; print(json.dumps(eagle_fast.backend))",
                       tmp_path, EAGLE_FAST_BACKEND=value)
        assert out == expected, value


@backend_independent
def test_env_simd_baseline(tmp_path):
    skip_or_fail_without_compiled("baseline")
    out = run_json(SUBPROCESS_PREDICT, tmp_path, EAGLE_FAST_SIMD="baseline")
    assert out["backend"] == "compiled"
    assert out["info"]["simd_level"] == "baseline"
    assert "x86-64-v3" not in out["info"]["compile_flags"]
    h, W, b, L = _subprocess_inputs()
    ref = float64_reference(h, W, b, L)
    np.testing.assert_allclose(out["probs"], ref["probs"], rtol=1e-12, atol=1e-15)
    assert out["spec"] == spec_reference(h, W, b, L, 0.7)


@backend_independent
def test_env_simd_x86_64_v3(tmp_path):
    skip_or_fail_without_compiled("x86-64-v3")
    out = run_json(SUBPROCESS_PREDICT, tmp_path, EAGLE_FAST_SIMD="x86-64-v3")
    assert out["backend"] == "compiled"
    assert out["info"]["simd_level"] == "x86-64-v3"


@backend_independent
def test_env_unknown_backend_fails_at_import(tmp_path):
    proc = run_python("import eagle_fast", tmp_path, EAGLE_FAST_BACKEND="fortran")
    assert proc.returncode != 0
    assert "EAGLE_FAST_BACKEND" in proc.stderr


@backend_independent
def test_env_unknown_simd_level_fails_at_import(tmp_path):
    if not _backend.compiled_available():
        pytest.skip("the SIMD level only matters for the compiled backend")
    proc = run_python("import eagle_fast", tmp_path, EAGLE_FAST_SIMD="avx512")
    assert proc.returncode != 0
    assert "avx512" in proc.stderr


# ---------------------------------------------------------------------------
# Compiled and fallback kernels expose the same API.
# ---------------------------------------------------------------------------

DRAFT_ATTRIBUTES = ("KernelHead", "max_threads", "OPENMP", "SIMD", "COMPILE_FLAGS", "COMPILER")


def _draft_modules():
    modules = [_backend.load("python").draft]
    if _backend.compiled_available():
        for level in _backend.simd_levels_available():
            modules.append(_backend.load("compiled", level).draft)
    return modules


@backend_independent
def test_kernel_modules_expose_the_same_api():
    skip_or_fail_without_compiled("baseline")
    compiled = _backend.load("compiled", "baseline")
    python = _backend.load("python")
    for backend in (compiled, python):
        for attr in DRAFT_ATTRIBUTES:
            assert hasattr(backend.draft, attr), (backend.name, attr)
        assert callable(backend.draft.max_threads)
        assert callable(getattr(backend.draft.KernelHead, "forward", None))
        assert isinstance(backend.draft.SIMD, str)
        assert isinstance(backend.draft.COMPILE_FLAGS, str)
        assert isinstance(backend.draft.COMPILER, str)
        assert callable(getattr(backend.spec, "spec_forward", None))


@backend_independent
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("batch", [None, 3])
@pytest.mark.parametrize("want", [(False, False), (True, False), (False, True), (True, True)])
def test_kernel_heads_return_the_same_structure(dtype, batch, want):
    rng = np.random.default_rng(2)
    W, b, L = random_head(rng, 7, 5, 13, dtype)
    hidden = rng.standard_normal((7,) if batch is None else (batch, 7)).astype(dtype)
    results = {}
    for module in _draft_modules():
        kernel = module.KernelHead(W, b, L)
        assert (kernel.d_model, kernel.d_proj, kernel.vocab) == (7, 5, 13)
        results[module.__name__] = kernel.forward(hidden, 0.8, 4, *want, 1)
    lead = () if batch is None else (batch,)
    for name, (n_bad, tokens, token_probs, logits, probs) in results.items():
        assert n_bad == 0, name
        assert tokens.dtype == np.int64 and tokens.shape == lead + (4,), name
        assert token_probs.dtype == dtype and token_probs.shape == lead + (4,), name
        for array, wanted in ((logits, want[0]), (probs, want[1])):
            if wanted:
                assert array.dtype == dtype and array.shape == lead + (13,), name
            else:
                assert array is None, name
    first = next(iter(results.values()))
    for name, result in results.items():
        np.testing.assert_array_equal(result[1], first[1], err_msg=name)


@backend_independent
def test_spec_kernels_agree_bit_for_bit():
    skip_or_fail_without_compiled("baseline")
    rng = np.random.default_rng(3)
    h, b = rng.standard_normal(9), rng.standard_normal(6)
    W, L = rng.standard_normal((6, 9)), rng.standard_normal((17, 6))
    outputs = []
    for name in ("compiled", "python"):
        spec = _backend.load(name).spec
        logits, probs = np.empty(17), np.empty(17)
        best = spec.spec_forward(h, W, b, L, 0.9, sys.version_info >= (3, 12), logits, probs, 1)
        outputs.append((best, logits, probs))
    assert outputs[0][0] == outputs[1][0]
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    np.testing.assert_array_equal(outputs[0][2], outputs[1][2])


@backend_independent
def test_public_api():
    assert set(eagle_fast.__all__) >= {"DraftHead", "DraftResult", "predict",
                                       "eagle_draft_from_hidden", "build_info", "backend"}
    namespace: dict = {}
    exec("from eagle_fast import *", namespace)
    assert namespace["backend"] == eagle_fast.backend
    assert isinstance(eagle_fast.__version__, str)
    with pytest.raises(AttributeError):
        eagle_fast.no_such_attribute  # noqa: B018


# -- command line ---------------------------------------------------------------

@backend_independent
def test_cli_info_prints_build_info(capsys):
    from eagle_fast import _cli

    assert _cli.main(["info"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == eagle_fast.build_info()


@backend_independent
def test_cli_demo_runs_every_backend_and_agrees(capsys):
    from eagle_fast import _cli

    assert _cli.main(["demo", "--preset", "tiny", "--batch", "3", "--top-k", "2",
                      "--seconds", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "hidden state 2: draft token" in out
    assert "python" in out and "NO" not in out
    for level in _backend.simd_levels_available():
        assert f"compiled ({level})" in out
