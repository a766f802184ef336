"""Shared library of the World Models on SocNavEnv pipeline.

Importing `lib` applies the process-wide speed settings in `lib.runtime` first.
"""

from lib import runtime as _runtime  # noqa: F401  (side effect: thread/allocator settings)
