"""The pipeline's name for the environment: this module is `socnavenv.core` itself.

The environment lives in the top-level package `socnavenv`, which imports nothing from
`lib`, so that another project can use it alone. Importing `lib.env.socnavenv` puts the
module object `socnavenv.core` in its place, not a copy: `sn.<name>` reaches every name
(underscored ones too), monkeypatching `sn` patches the simulator itself, the numba
kernels compile and cache once (in `socnavenv/__pycache__`), and `SocNavEnv-v0` is
registered once. As every module of `lib`, it comes after `lib`'s process settings.
"""

import sys

import socnavenv.core

sys.modules[__name__] = socnavenv.core
