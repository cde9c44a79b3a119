"""A new user's first hour: what eagle_fast says when its compiled kernels are
missing, and the ``eagle-fast`` command line's handling of bad arguments,
closed pipes and big demos.

Most checks run in fresh interpreters, on copies of the package under test
laid out as a user would have them (an installed copy without its compiled
modules, a source checkout), and through ``python -m eagle_fast``."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import eagle_fast
from eagle_fast import _backend, _cli
from support import backend_independent

pytestmark = backend_independent

PACKAGE_DIR = Path(eagle_fast.__file__).resolve().parent
ENV_VARS = ("EAGLE_FAST_BACKEND", "EAGLE_FAST_SIMD", "PYTHONWARNINGS")


def _env(pythonpath: list[Path], **changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    env.update(changes)
    return env


def run(args: list[str], cwd: Path, pythonpath: list[Path], timeout: float = 120,
        **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(pythonpath, **env),
                          capture_output=True, text=True, timeout=timeout)


def copy_package(parent: Path, extra_files: dict[str, str] = {}) -> Path:  # noqa: B006
    """The Python files of the package under test, subpackages included (no
    compiled modules), in ``parent/eagle_fast``, plus ``extra_files`` (name:
    text) inside it."""
    target = parent / "eagle_fast"
    target.mkdir(parents=True)
    for source in PACKAGE_DIR.rglob("*"):
        if source.suffix in (".py", ".typed") and "__pycache__" not in source.parts:
            destination = target / source.relative_to(PACKAGE_DIR)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    for name, text in extra_files.items():
        (target / name).write_text(text)
    return target


def make_checkout(root: Path) -> Path:
    """A fake source checkout: the package beside CMakeLists.txt and src/."""
    copy_package(root)
    (root / "CMakeLists.txt").write_text("project(eagle_fast LANGUAGES C)\n")
    (root / "src").mkdir()
    (root / "src" / "_draft_kernel.pyx").write_text("# kernel source\n")
    return root


USER_SCRIPT = """\
import eagle_fast
import eagle_fast._cli
from eagle_fast import _backend
eagle_fast.build_info()
_backend.use("python")
print(eagle_fast.backend)
"""


def run_user_script(folder: Path, cwd: Path, pythonpath: list[Path], *flags: str,
                    **env: str) -> subprocess.CompletedProcess:
    script = folder / "user_script.py"
    script.write_text(USER_SCRIPT)
    return run([*flags, str(script)], cwd, pythonpath, **env)


def runtime_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "RuntimeWarning" in line]


# ---------------------------------------------------------------------------
# Missing compiled kernels: one RuntimeWarning that names the cause.
# ---------------------------------------------------------------------------

def test_installed_without_kernels_warns_once_with_cause_and_fix(tmp_path):
    site = tmp_path / "site"
    copy_package(site)
    proc = run_user_script(tmp_path, tmp_path, [site])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python"]
    warned = runtime_warnings(proc.stderr)
    assert len(warned) == 1, proc.stderr
    # Pointed at the user's import, not at eagle_fast's internals.
    assert warned[0].startswith(f"{tmp_path / 'user_script.py'}:1: RuntimeWarning"), warned
    message = warned[0]
    assert "installed without its compiled kernels" in message
    assert str(site / "eagle_fast") in message
    assert "C compiler" in message and "pip install -v" in message
    assert "EAGLE_FAST_PURE_PYTHON=ON" in message
    assert "EAGLE_FAST_BACKEND=python" in message
    assert "source tree" not in message


@pytest.mark.parametrize("layout", ["installed", "checkout"])
def test_backend_python_silences_the_warning(tmp_path, layout):
    if layout == "installed":
        copy_package(tmp_path / "site")
        cwd, path = tmp_path, [tmp_path / "site"]
    else:  # a script in the checkout imports the checkout's package
        cwd, path = make_checkout(tmp_path / "repo"), [PACKAGE_DIR.parent]
    proc = run_user_script(cwd, cwd, path, "-W", "error", EAGLE_FAST_BACKEND="python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python"]
    assert proc.stderr == ""


def test_compiled_request_without_kernels_names_the_cause(tmp_path):
    copy_package(tmp_path / "site")
    proc = run(["-c", "import eagle_fast"], tmp_path, [tmp_path / "site"],
               EAGLE_FAST_BACKEND="compiled")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:"), proc.stderr
    assert "installed without its compiled kernels" in last
    assert "EAGLE_FAST_BACKEND=python" in last


def test_source_checkout_warns_that_it_hides_the_installed_copy(tmp_path):
    repo = make_checkout(tmp_path / "repo")
    # The installed package under test is on the path too, behind the folder
    # Python runs in -- as after pip install . in a clone.
    installed = PACKAGE_DIR.parent
    for args in (["-c", "import eagle_fast"], ["-m", "eagle_fast", "--version"]):
        proc = run(args, repo, [installed])
        assert proc.returncode == 0, proc.stderr
        warned = runtime_warnings(proc.stderr)
        assert len(warned) == 1, proc.stderr
        message = warned[0]
        assert f"source tree in {repo.resolve()}" in message
        assert f"hides the installed copy in {PACKAGE_DIR}" in message
        assert "another folder" in message and "python -m pytest" in message
        assert "EAGLE_FAST_BACKEND=python" in message
        assert "installed without" not in message


def test_source_checkout_without_installed_copy(tmp_path):
    repo = make_checkout(tmp_path / "repo")
    proc = run(["-c", "import eagle_fast"], repo, [])
    # (The test's own interpreter may have an installed copy in site-packages.)
    message = runtime_warnings(proc.stderr)[0]
    assert f"source tree in {repo.resolve()}" in message
    assert "hides the installed copy in" in message or "no installed copy" in message


def test_source_checkout_compiled_request_names_the_source_tree(tmp_path):
    repo = make_checkout(tmp_path / "repo")
    proc = run(["-c", "import eagle_fast"], repo, [PACKAGE_DIR.parent],
               EAGLE_FAST_BACKEND="compiled")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "source tree" in last, proc.stderr
    assert "reinstall with a C compiler" not in last


def test_package_folder_without_sources_is_not_a_checkout(tmp_path):
    # CMakeLists.txt alone (say, a user's own project folder) is not a checkout.
    folder = tmp_path / "project"
    copy_package(folder)
    (folder / "CMakeLists.txt").write_text("project(mine)\n")
    message = runtime_warnings(run(["-c", "import eagle_fast"], folder, []).stderr)[0]
    assert "installed without its compiled kernels" in message


def test_kernels_that_fail_to_load_are_reported_as_such(tmp_path):
    site = tmp_path / "site"
    reason = "libgomp.so.1: cannot open shared object file"
    copy_package(site, {"_draft_kernel.py": f"raise ImportError({reason!r})\n"})
    proc = run(["-c", "import eagle_fast"], tmp_path, [site])
    assert proc.returncode == 0, proc.stderr
    message = runtime_warnings(proc.stderr)[0]
    assert "do not load" in message and reason in message
    assert "installed without" not in message


def test_package_under_test_warns_only_without_kernels(tmp_path):
    proc = run(["-W", "error::RuntimeWarning", "-c", "import eagle_fast"], tmp_path,
               [PACKAGE_DIR.parent])
    if _backend.compiled_available():
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    else:
        assert proc.returncode != 0 and "RuntimeWarning" in proc.stderr


# ---------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------

def cli(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run(["-m", "eagle_fast", *args], tmp_path, [PACKAGE_DIR.parent], timeout=timeout,
               EAGLE_FAST_BACKEND=os.environ.get("EAGLE_FAST_BACKEND", "auto"))


RST_MARKUP = re.compile(r"``|:(func|class|meth|mod):|\.\. ")


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"], ["demo", "--help"],
                                  ["info", "--help"], ["inspect", "--help"]])
def test_help_is_plain_text(tmp_path, args):
    proc = cli(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: eagle-fast"), proc.stdout
    assert "error:" not in proc.stderr
    assert not RST_MARKUP.search(proc.stdout), proc.stdout
    if len(args) <= 1:
        for command in ("info", "demo", "inspect"):
            assert command in proc.stdout


def test_version(tmp_path):
    proc = cli(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"eagle-fast {eagle_fast.__version__} ")
    assert eagle_fast.backend in proc.stdout or "python" in proc.stdout


BAD_ARGUMENTS = [
    ["bogus"],
    ["--no-such-option"],
    ["inspect"],
    ["demo", "--preset", "tiny", "--top-k", "0"],
    ["demo", "--preset", "tiny", "--top-k", "-3"],
    ["demo", "--preset", "tiny", "--top-k", "two"],
    ["demo", "--preset", "tiny", "--top-k", "51"],  # the vocabulary is 50
    ["demo", "--preset", "tiny", "--top-k", "1e9"],
    ["demo", "--preset", "tiny", "--batch", "0"],
    ["demo", "--preset", "tiny", "--batch", "-1"],
    ["demo", "--preset", "tiny", "--batch", "1.5"],
    ["demo", "--preset", "tiny", "--seconds", "-1"],
    ["demo", "--preset", "tiny", "--seconds", "0"],
    ["demo", "--preset", "tiny", "--seconds", "nan"],
    ["demo", "--preset", "tiny", "--seconds", "inf"],
    ["demo", "--preset", "tiny", "--seconds", "soon"],
    ["demo", "--preset", "huge"],
    ["demo", "--preset", "tiny", "--dtype", "float16"],
    ["demo", "--preset", "tiny", "--weight-dtype", "int4"],
    ["demo", "--preset", "tiny", "--weight-dtype", "int8", "--dtype", "float64"],
    ["demo", "--checkpoint", "head.safetensors", "--preset", "tiny"],
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=" ".join)
def test_bad_arguments_are_usage_errors(capsys, args):
    # In this process (an exception escaping main() fails the test) ...
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(args)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "usage: eagle-fast" in err and "error:" in err
    assert out == ""  # nothing was started


@pytest.mark.parametrize("args", [BAD_ARGUMENTS[0], BAD_ARGUMENTS[3], BAD_ARGUMENTS[6],
                                  BAD_ARGUMENTS[11]], ids=" ".join)
def test_bad_arguments_in_a_fresh_process(tmp_path, args):
    # ... and through the real entry point.
    proc = cli(tmp_path, *args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "usage: eagle-fast" in proc.stderr and "error:" in proc.stderr
    assert proc.stdout == ""


def test_top_k_beyond_a_checkpoints_vocabulary_is_a_usage_error(tmp_path):
    pytest.importorskip("safetensors")
    rng = np.random.default_rng(0)
    head = eagle_fast.DraftHead(rng.standard_normal((4, 6)), rng.standard_normal(4),
                                rng.standard_normal((9, 4)))
    head.save(tmp_path / "head.safetensors")
    proc = cli(tmp_path, "demo", "--checkpoint", "head.safetensors", "--top-k", "10")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "vocabulary (9)" in proc.stderr
    ok = cli(tmp_path, "demo", "--checkpoint", "head.safetensors", "--top-k", "9",
             "--seconds", "0.01")
    assert ok.returncode == 0, ok.stderr
    assert "NumPy by hand" in ok.stdout


def test_a_demo_too_big_for_memory_is_refused_before_it_starts(tmp_path):
    proc = cli(tmp_path, "demo", "--preset", "tiny", "--batch", str(10**12))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "needs about" in proc.stderr and "available" in proc.stderr


CLOSED_PIPE_COMMANDS = [["info"], ["--help"], [], ["--version"], ["demo", "--help"],
                        ["demo", "--preset", "tiny", "--seconds", "0.01"]]


@pytest.mark.parametrize("args", CLOSED_PIPE_COMMANDS, ids=lambda a: " ".join(a) or "bare")
def test_closed_pipe_ends_quietly(tmp_path, args):
    """eagle-fast ... | head -1, made deterministic: the reader is gone before
    the command writes anything."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "eagle_fast", *args], cwd=tmp_path,
                              env=_env([PACKAGE_DIR.parent]), stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1)  # (argparse itself ignores a failed write of --help)


def test_closed_pipe_in_a_shell_pipeline(tmp_path):
    if shutil.which("sh") is None or shutil.which("head") is None:
        pytest.skip("needs sh and head")
    command = f"'{sys.executable}' -m eagle_fast demo --preset tiny --seconds 0.01 | head -1"
    proc = subprocess.run(["sh", "-c", command], cwd=tmp_path, env=_env([PACKAGE_DIR.parent]),
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("eagle_fast demo: preset tiny")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32",
                    reason="POSIX signals")
def test_interrupted_demo_ends_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "eagle_fast", "demo", "--preset", "tiny",
                             "--seconds", "60"], cwd=tmp_path, env=_env([PACKAGE_DIR.parent]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("NumPy by hand"):
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr


# -- the demo: cost first, then NumPy by hand as the reference --------------------

def parse_table(out: str) -> dict[str, tuple[float, float]]:
    """contender -> (µs per call, printed ratio vs NumPy)."""
    rows = {}
    for line in out.splitlines():
        match = re.match(r"(.+?)\s+([\d.]+) (µs|ms)\s+([\d.]+)x  ", line)
        if match:
            us = float(match[2]) * (1000 if match[3] == "ms" else 1)
            rows[match[1]] = (us, float(match[4]))
    return rows


@pytest.mark.parametrize("extra", [[], ["--weight-dtype", "int8", "--batch", "3",
                                        "--top-k", "4"]])
def test_demo_says_its_cost_first_and_compares_with_numpy(capsys, extra):
    assert _cli.main(["demo", "--preset", "tiny", "--seconds", "0.01", *extra]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    cost = next(i for i, line in enumerate(lines) if line.startswith("cost: about"))
    assert cost < next(i for i, line in enumerate(lines) if "random weights built" in line)
    assert "of memory" in lines[cost] and "s to build" in lines[cost]
    rows = parse_table(out)
    assert list(rows)[0] == "NumPy by hand"
    numpy_us, numpy_ratio = rows["NumPy by hand"]
    assert numpy_ratio == 1.0
    expected = {"python"} | {f"compiled ({level})"
                             for level in _backend.simd_levels_available()}
    assert set(rows) == {"NumPy by hand"} | expected
    for label, (us, ratio) in rows.items():
        # The printed µs are rounded to 3-4 digits.
        assert math.isclose(ratio, numpy_us / us, rel_tol=0.1, abs_tol=0.01), (label, out)
    assert "NO" not in out


def test_random_weights_are_built_without_full_size_temporaries():
    d_model, d_proj, vocab = 64, 128, 40000  # L: 20 MiB in float32
    weights = (d_proj * d_model + d_proj + vocab * d_proj) * 4
    tracemalloc.start()
    try:
        W, b, L = _cli._random_head(d_model, d_proj, vocab, "float32",
                                    np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (W.shape, b.shape, L.shape) == ((d_proj, d_model), (d_proj,), (vocab, d_proj))
    assert peak <= weights + _cli._BLOCK_WEIGHTS * 6, (peak, weights)  # one block and change
    # The weights are what the demo claims: W h + b has unit-scale entries,
    # L's rows a norm of about 4.
    assert 0.9 < W.std() * math.sqrt(d_model) < 1.1
    assert 3.8 < np.linalg.norm(L, axis=1).mean() < 4.2


@pytest.mark.parametrize("weight_dtype", [None, "int8", "bfloat16"])
def test_demo_memory_estimate_covers_what_it_allocates(capsys, monkeypatch, weight_dtype):
    d_model, d_proj, vocab = 512, 256, 12000
    monkeypatch.setitem(_cli.PRESETS, "test", (d_model, d_proj, vocab))
    args = ["demo", "--preset", "test", "--seconds", "0.01", "--batch", "2"]
    if weight_dtype:
        args += ["--weight-dtype", weight_dtype]
    tracemalloc.start()
    try:
        assert _cli.main(args) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = _cli._demo_memory(d_proj * (d_model + vocab), d_proj, vocab, d_model, 4,
                                 weight_dtype, 2) - _cli._BASE_BYTES
    assert peak <= estimate, (peak, estimate)
    assert estimate <= 2.5 * peak, (peak, estimate)  # an estimate, not a wild guess
    assert "cost: about" in capsys.readouterr().out


def test_demo_on_medusa_and_d2t_checkpoints_compares_with_numpy(tmp_path, capsys):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(3)
    d, vocab = 24, 60
    tensors = {}
    for i in range(3):
        tensors[f"{i}.0.linear.weight"] = (rng.standard_normal((d, d)) / 5).astype(np.float32)
        tensors[f"{i}.0.linear.bias"] = (rng.standard_normal(d) * 0.1).astype(np.float32)
        tensors[f"{i}.1.weight"] = rng.standard_normal((vocab, d)).astype(np.float32)
    safetensors_numpy.save_file(tensors, str(tmp_path / "medusa.safetensors"))
    d2t = np.arange(20) * 2  # draft token i is target token 3 i
    eagle_fast.DraftHead(rng.standard_normal((8, 16)), rng.standard_normal(8),
                         rng.standard_normal((20, 8)) * 3, d2t=d2t, target_vocab_size=64,
                         weight_dtype="bfloat16").save(tmp_path / "d2t.safetensors")
    for name in ("medusa", "d2t"):
        assert _cli.main(["demo", "--checkpoint", str(tmp_path / f"{name}.safetensors"),
                          "--batch", "2", "--top-k", "3", "--seconds", "0.01"]) == 0
        out = capsys.readouterr().out
        rows = parse_table(out)
        assert list(rows)[0] == "NumPy by hand" and len(rows) == 1 + len(_cli._all_backends())
        numpy_line = next(line for line in out.splitlines() if line.startswith("NumPy"))
        assert numpy_line.endswith("yes"), out  # NumPy by hand finds the same tokens
        assert "NO" not in out
    assert "dequantized" in out  # the bfloat16 head: NumPy uses its dequantized weights
