"""Shared library of the World Models on SocNavEnv pipeline.

Packages by layer, each importing only those before it (docs/layout.md): the top-level
utilities (`compat`, `devices`, `cli`, `fileio`, `manifest`, `seeding`, `parallel`,
`training`, `checkpointer`, `tensorboard_log`, `progress`, `drawing`, `validate`), then `kernels`,
`env`, `models`, `data`, `control`, `diagnostics`.

Importing `lib` applies the process-wide speed settings in `lib.kernels.runtime` first (they
must precede NumPy), then `lib.compat`'s stand-ins for the names Chainer 7.8.1 needs
from NumPy and setuptools (they must precede Chainer).
"""

from lib.kernels import runtime as _runtime  # noqa: F401  (side effect: thread/allocator settings)

# isort: split
from lib import compat as _compat

_compat.install()
