"""Chainer 7.8.1 on today's NumPy, setuptools and CuPy, without patching site-packages.

Chainer's last release (7.8.1, 2020) reads three names that have since gone away.
`install()` puts a small stand-in for each in place before Chainer is imported; each
stand-in is a no-op where the real name still exists. `lib/__init__.py` calls it, and
every script, test and benchmark imports `lib` before Chainer.

- `numpy.sctypes`, removed in NumPy 2.0. Read by `chainer/functions/array/as_strided.py`,
  at import (`{t().itemsize: t for t in np.sctypes['int']}`) and in its backward
  (`gy.dtype not in np.sctypes['float']`).
- `numpy.distutils.system_info`, gone on Python >= 3.12 (and from NumPy 2 there).
  Imported by `chainer/_environment_check.py`, which only calls
  `get_info('blas_opt')` on macOS to warn about Accelerate; the stand-in reports no
  BLAS information, so that check says nothing.
- `pkg_resources`, absent where setuptools is >= 81 or not installed. Imported by
  `chainer/_environment_check.py` (`require`, `get_distribution` and two exception
  classes, to check the versions of CuPy and iDeep) and `chainer/testing/helper.py`
  and `doctest_helper.py` (`WorkingSet().require` and `ResolutionError`, for
  `testing.with_requires`). The stand-in answers from `importlib.metadata`.

And one warning: `chainer/_environment_check.py` warns at every import that a CuPy
outside `>=7.7.0,<8.0.0` "may not be compatible". CuPy 13 (CUDA 12) and 14 (CUDA 13)
are the ones that run on today's GPUs, and this project runs Chainer on them, so that
one warning is silenced; every other warning stays.
"""

import importlib.metadata
import importlib.util
import sys
import types
import warnings

import numpy as np

_installed = {"done": False}


def install() -> None:
    """Fills in what Chainer 7.8.1 needs (idempotent; call before `import chainer`)."""
    if _installed["done"]:
        return
    _numpy_sctypes()
    _numpy_distutils()
    _pkg_resources()
    warnings.filterwarnings("ignore", message=r"(?s).*CuPy \(.*\) version .* may not be compatible")
    _installed["done"] = True


def _has_attr(module, name: str) -> bool:
    # NumPy 2 answers a removed name with an AttributeError from its module __getattr__.
    try:
        getattr(module, name)
    except AttributeError:
        return False
    return True


def _numpy_sctypes() -> None:
    """`np.sctypes` as NumPy 1.26 defined it (for chainer/functions/array/as_strided.py)."""
    if _has_attr(np, "sctypes"):
        return
    np.sctypes = {
        "int": [np.int8, np.int16, np.int32, np.int64],
        "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
        "float": [np.float16, np.float32, np.float64, np.longdouble],
        "complex": [np.complex64, np.complex128, np.clongdouble],
        "others": [bool, object, bytes, str, np.void],
    }


def _module_missing(name: str) -> bool:
    if name in sys.modules:
        return False
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):  # a parent package is missing or broken
        return True


def _numpy_distutils() -> None:
    """`numpy.distutils.system_info.get_info` (for chainer/_environment_check.py)."""
    if not _module_missing("numpy.distutils"):
        return
    package = types.ModuleType("numpy.distutils")
    package.__doc__ = "Stand-in from lib/compat.py: NumPy has no distutils here."
    package.__path__ = []
    system_info = types.ModuleType("numpy.distutils.system_info")
    system_info.get_info = _no_build_info
    package.system_info = system_info
    sys.modules["numpy.distutils"] = package
    sys.modules["numpy.distutils.system_info"] = system_info
    np.distutils = package


def _no_build_info(name, notfound_action=0):
    """Like `numpy.distutils.system_info.get_info` finding nothing: an empty dict."""
    return {}


class ResolutionError(Exception):
    """pkg_resources' base class for requirement failures."""


class DistributionNotFound(ResolutionError):
    """A required distribution is not installed."""


class VersionConflict(ResolutionError):
    """An installed distribution does not satisfy the version specifier."""


def _parse(requirement: str):
    from packaging.requirements import Requirement  # only when a check is made

    return Requirement(requirement)


def _require(*requirements):
    """Checks `name<spec>` strings against the installed distributions.

    Raises:
        DistributionNotFound: a name is not installed.
        VersionConflict: its version is outside the specifier.
    """
    found = []
    for text in requirements:
        req = _parse(text)
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise DistributionNotFound(text) from exc
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            raise VersionConflict(f"{req.name} {version} does not satisfy {text}")
        found.append(_get_distribution(req.name))
    return found


def _get_distribution(name: str):
    """An object with the installed `version` of `name`, as pkg_resources returns."""
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise DistributionNotFound(name) from exc
    return types.SimpleNamespace(project_name=name, key=name.lower(), version=version)


class _WorkingSet:
    """pkg_resources.WorkingSet, reduced to the `require` Chainer's testing uses."""

    def require(self, *requirements):
        return _require(*requirements)


def _pkg_resources() -> None:
    """A `pkg_resources` stand-in (for chainer/_environment_check.py and chainer/testing)."""
    if not _module_missing("pkg_resources"):
        return
    module = types.ModuleType("pkg_resources")
    module.__doc__ = "Stand-in from lib/compat.py: setuptools' pkg_resources is not installed."
    for name in ("ResolutionError", "DistributionNotFound", "VersionConflict"):
        setattr(module, name, globals()[name])
    module.require, module.get_distribution = _require, _get_distribution
    module.WorkingSet = _WorkingSet
    sys.modules["pkg_resources"] = module
