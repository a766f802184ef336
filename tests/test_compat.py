"""lib/compat.py: Chainer 7.8.1 on NumPy 2 and without pkg_resources or numpy.distutils,
and every entry point importing `lib` before NumPy and Chainer.

The absences are simulated in a fresh interpreter (an import blocker for the two
modules, `np.sctypes` deleted where the installed NumPy still has it), so these
tests mean the same under any NumPy and setuptools."""

import ast
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs first in the child: hides pkg_resources and numpy.distutils as a Python 3.12
# machine with NumPy 2 and setuptools >= 81 (or none) does.
BLOCKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})

    class Hide:
        names = ("pkg_resources", "numpy.distutils")

        def find_spec(self, name, path=None, target=None):
            if any(name == n or name.startswith(n + ".") for n in self.names):
                raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)")
            return None

    sys.meta_path.insert(0, Hide())
    import numpy as np
    try:
        del np.sctypes  # NumPy < 2 still has it
    except AttributeError:
        pass
    """
).format(root=ROOT)


def run_child(body: str) -> subprocess.CompletedProcess:
    code = BLOCKER + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_the_simulation_really_removes_the_names():
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER + "import chainer"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "sctypes" in proc.stderr or "hidden by the test" in proc.stderr


def test_chainer_works_with_the_names_missing():
    proc = run_child(
        """
        import lib  # installs the stand-ins
        import numpy as np
        import chainer
        import chainer.functions as F
        import pkg_resources

        assert pkg_resources.__doc__.startswith("Stand-in from lib/compat.py")
        assert sys.modules["numpy.distutils"].system_info.get_info("blas_opt") == {}
        # as_strided reads np.sctypes at import and in backward
        assert np.int64 in np.sctypes["int"] and np.float32 in np.sctypes["float"]
        x = chainer.Variable(np.arange(6, dtype=np.float32))
        y = F.as_strided(x, (2, 2), (1, 1), 0)  # y[i, j] = x[i + j]
        y.grad = np.ones((2, 2), np.float32)
        y.backward()
        assert x.grad.tolist() == [1.0, 2.0, 1.0, 0.0, 0.0, 0.0], x.grad
        # chainer.testing's requirement checks answer from importlib.metadata
        import chainer.testing
        import unittest

        def probe(decorator):
            class T(unittest.TestCase):
                @decorator
                def test(self):
                    pass
            result = unittest.TestResult()
            T("test").run(result)
            return len(result.skipped)

        assert probe(chainer.testing.with_requires("numpy>=1.0")) == 0
        assert probe(chainer.testing.with_requires("numpy<1.0")) == 1
        assert probe(chainer.testing.with_requires("no-such-package-xyz")) == 1
        try:
            pkg_resources.require("numpy<1.0")
        except pkg_resources.VersionConflict:
            pass
        else:
            raise AssertionError("no VersionConflict")
        try:
            pkg_resources.require("no-such-package-xyz")
        except pkg_resources.DistributionNotFound:
            pass
        else:
            raise AssertionError("no DistributionNotFound")
        assert pkg_resources.get_distribution("numpy").version == np.__version__
        print("ok")
        """
    )
    assert proc.stdout.strip().endswith("ok")


def test_each_stand_in_is_a_no_op_where_the_name_exists():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, types
                sys.path.insert(0, {ROOT!r})
                import numpy as np
                marker = {{"int": [np.int32]}}
                np.sctypes = marker  # a NumPy that still has it
                real = types.ModuleType("pkg_resources")
                sys.modules["pkg_resources"] = real  # a setuptools that still has it
                dist = types.ModuleType("numpy.distutils")
                sys.modules["numpy.distutils"] = dist
                from lib import compat
                compat.install()
                assert np.sctypes is marker
                assert sys.modules["pkg_resources"] is real
                assert sys.modules["numpy.distutils"] is dist
                print("ok")
                """
            ),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_the_cupy_version_warning_is_silenced_and_others_are_not():
    # In a fresh interpreter: pytest keeps its own warning filters around each test.
    code = textwrap.dedent(
        f"""
        import sys, warnings
        sys.path.insert(0, {ROOT!r})
        import lib  # installs the filter
        # The text chainer/_environment_check.py formats for a CuPy outside >=7.7,<8:
        warnings.warn(
            "\\n" + "-" * 80 + "\\nCuPy (cupy-cuda13x) version 14.2.0 may not be compatible "
            "with this version of Chainer.\\nPlease consider installing the supported version"
        )
        warnings.warn("iDeep (ideep4py) version 1.0 may not be compatible")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert "CuPy" not in proc.stderr
    assert "iDeep (ideep4py) version 1.0 may not be compatible" in proc.stderr


# What an entry point imports only after lib: socnavenv imports NumPy.
AFTER_LIB = ("numpy", "chainer", "socnavenv")


def _first_import_lines(path):
    """Line numbers of the first import of lib, numpy, chainer and socnavenv in a file."""
    with open(path) as f:
        tree = ast.parse(f.read())
    first = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in ("lib", *AFTER_LIB):
                first[top] = min(first.get(top, node.lineno), node.lineno)
    return first


def entry_points():
    """Every file Python runs first: the top level's scripts, diagnostics, benchmarks, tools,
    conftest (not benchmarks/torch_*.py, PyTorch twins run from the reference venv, without
    lib)."""
    out = [f for f in os.listdir(ROOT) if f.endswith(".py")]
    for folder in ("diagnostics", "benchmarks", "tools"):
        out += [
            os.path.join(folder, f)
            for f in os.listdir(os.path.join(ROOT, folder))
            if f.endswith(".py") and not f.startswith("torch_")
        ]
    return sorted(out) + [os.path.join("tests", "conftest.py")]


@pytest.mark.parametrize("path", entry_points())
def test_entry_points_import_lib_before_numpy_and_chainer(path):
    first = _first_import_lines(os.path.join(ROOT, path))
    if not set(AFTER_LIB) & set(first):
        return
    assert "lib" in first, f"{path} uses NumPy or Chainer but never imports lib"
    for other in AFTER_LIB:
        if other in first:
            assert first["lib"] < first[other], (
                f"{path} imports {other} (line {first[other]}) before lib (line {first['lib']})"
            )


@pytest.mark.parametrize("numpy_first", [True, False])
def test_importing_lib_after_numpy_warns(numpy_first):
    first, second = ("numpy", "lib") if numpy_first else ("lib", "numpy")
    code = (
        f"import os, sys; sys.path.insert(0, {ROOT!r})\n"
        "os.environ.pop('OPENBLAS_THREAD_TIMEOUT', None)\n"
        f"import {first}, {second}\n"
        "from lib.kernels import runtime\n"
        "print(runtime.blas_threads_sleep(), runtime.kernel_threads())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    sleeps, threads = proc.stdout.split()
    if numpy_first:
        assert "lib was imported after NumPy" in proc.stderr and "import lib first" in proc.stderr
        assert (sleeps, threads) == ("False", "1")
    else:
        assert "RuntimeWarning" not in proc.stderr and sleeps == "True"
