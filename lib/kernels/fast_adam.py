"""Adam for Chainer with a fused CPU update: one numba pass per parameter.

Chainer's `AdamRule.update_core_cpu` makes about ten NumPy passes over every
parameter and allocates five temporaries the size of the parameter (`grad - m`,
its product, `grad * grad`, the step, `step * m`): for the 4.3 M-parameter VAE,
a visible share of a training step. `FastAdam` does the
same arithmetic in one numba loop that reads `param, grad, m, v` once and
writes `param, m, v` in place, split over the cores for large parameters.

Semantics are Chainer's `Adam` exactly, not approximately: the kernel performs
the same float operations in the same order and precision as Chainer's NumPy
code, so params, `m` and `v` match it bit for bit on float32 and float64:

    m += (1 - beta1) * (grad - m)
    v += (1 - beta2) * (grad * grad - v)
    param += -eta * ((alpha_t / (sqrt(v) + eps)) * m)

with `alpha_t = alpha * sqrt(1 - beta2**t) / (1 - beta1**t)` (the rule's
`alpha_t`, Chainer's bias correction). Everything else is inherited from
Chainer: the state keeps the names and shapes `m` and `v` (same shape and dtype
as the parameter) per rule, plus `t` per rule and on the optimizer, so
`chainer.serializers` snapshots are interchangeable with `chainer.optimizers.
Adam`'s; optimizer hooks (e.g. `GradientClipping`) run as before, since they
act on the gradients before `update_core`.

Falls back to Chainer's own update for anything that is not a plain NumPy
float32/float64 C-contiguous array (CuPy and ChainerX arrays, iDeep arrays,
float16 parameters). Weight decay, AMSGrad and AdaBound are not implemented and
raise `NotImplementedError`.
"""

import chainer
import numba
import numpy as np
from chainer.optimizers import adam

from lib.kernels import runtime  # parallel_ranges: the GIL-free kernels' shared thread pool

# Parameters smaller than this run on the calling thread: below it a thread
# hand-off costs more than the pass itself (float32 elements).
_SPLIT_MIN = 1 << 16

_FUSED_DTYPES = (np.float32, np.float64)


# error_model="numpy": a division by zero gives inf/nan as in Chainer's NumPy
# code instead of raising, and without the zero check LLVM vectorizes the loop.
@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam_kernel(p, g, m, v, one_minus_beta1, one_minus_beta2, alpha_t, eps, neg_eta):
    """One Adam step, in place, in the order and precision of Chainer's NumPy code.

    All arrays share one dtype T (float32 or float64) and every scalar is a T,
    so no operation is promoted to a wider type than Chainer's.

    Args:
        p: (N,) T, parameter; updated in place.
        g: (N,) T, gradient.
        m: (N,) T, first moment; updated in place.
        v: (N,) T, second moment; updated in place.
        one_minus_beta1, one_minus_beta2: T, `1 - beta1`, `1 - beta2`.
        alpha_t: T, the bias-corrected learning rate of this step.
        eps: T.
        neg_eta: T, `-eta` (-1 by default).
    """
    for i in range(p.size):
        gi = g[i]
        mi = m[i]
        vi = v[i]
        mi = mi + one_minus_beta1 * (gi - mi)
        vi = vi + one_minus_beta2 * (gi * gi - vi)
        m[i] = mi
        v[i] = vi
        step = alpha_t / (np.sqrt(vi) + eps)
        p[i] = p[i] + neg_eta * (step * mi)


def _check_supported(hp):
    """Raises `NotImplementedError` for Adam options the fused kernel lacks."""
    if hp.weight_decay_rate != 0:
        raise NotImplementedError("FastAdam: weight_decay_rate != 0 is not supported")
    if hp.amsgrad:
        raise NotImplementedError("FastAdam: amsgrad is not supported")
    if hp.adabound:
        raise NotImplementedError("FastAdam: adabound is not supported")


def _fusable(arr, dtype):
    """Whether `arr` is a writable C-contiguous NumPy array of `dtype`."""
    return (
        type(arr) is np.ndarray
        and arr.dtype == dtype
        and arr.flags.c_contiguous
        and arr.flags.writeable
    )


class FastAdamRule(adam.AdamRule):
    """`AdamRule` whose CPU update is one fused numba pass (see module docstring)."""

    def update_core_cpu(self, param):
        """Updates `param.array`, `state['m']` and `state['v']` in place.

        Args:
            param: chainer.Variable whose `array` and `grad` are NumPy arrays of
                one shape S; `state['m']` and `state['v']` have shape S too.
        """
        grad = param.grad
        if grad is None:
            return
        hp = self.hyperparam
        _check_supported(hp)
        p, m, v = param.array, self.state["m"], self.state["v"]
        dtype = p.dtype
        if dtype.type not in _FUSED_DTYPES or not all(_fusable(a, dtype) for a in (p, m, v)):
            super().update_core_cpu(param)
            return
        self._check_eps(dtype.type)
        g = np.ascontiguousarray(grad, dtype=dtype).reshape(-1)
        p, m, v = p.reshape(-1), m.reshape(-1), v.reshape(-1)
        scalars = tuple(
            dtype.type(s) for s in (1.0 - hp.beta1, 1.0 - hp.beta2, self.alpha_t, hp.eps, -hp.eta)
        )
        n = p.size
        if n < _SPLIT_MIN:
            _adam_kernel(p, g, m, v, *scalars)
            return

        def part(lo, hi):
            _adam_kernel(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], *scalars)

        runtime.parallel_ranges(part, n)


class FastAdam(chainer.optimizers.Adam):
    """`chainer.optimizers.Adam` with a fused numba update on the CPU.

    Takes the same arguments as `chainer.optimizers.Adam` and gives the same
    results, state and snapshots; `weight_decay_rate`, `amsgrad` and `adabound`
    must keep their defaults.

    Example:
        >>> optimizer = FastAdam(alpha=1e-4)
        >>> optimizer.setup(model)
        >>> optimizer.update(loss_fn, x)

    Raises:
        NotImplementedError: for weight decay, AMSGrad or AdaBound (here, or at
            the first update if they are switched on afterwards).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_supported(self.hyperparam)

    def create_update_rule(self):
        """A `FastAdamRule` sharing this optimizer's hyperparameters."""
        return FastAdamRule(self.hyperparam)
