"""M's numba kernels: the fused mixture NLL (with its gradient) and mixture sampling.

The CPU fast paths of `lib.models.mdn_rnn`: `MDNNLL` is the Chainer node its `mdn_nll`
uses on NumPy arrays, `sample_kernel` the one its `sample` uses. The mixture head's
layout, `(3, K, Z)` per row (logits, means, log standard deviations, each (K, Z) with
the latent dimension innermost), is documented there.
"""

import math

import chainer
import chainer.functions as F
import numba
import numpy as np
from chainer import function_node
from numba import types
from numba.extending import overload

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Far beyond any sane z-score, but finite in float32 (1e30 < 3.4e38), so an
# absurd target gives a huge finite NLL rather than inf - inf = NaN.
MAX_SQUARED_Z = 1e30


# error_model="numpy" drops numba's division-by-zero branch and the fastmath
# flags allow contraction, which lets LLVM vectorise the loops below; NaN/inf
# semantics are kept so a diverging run still shows NaN.
_JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract", "arcp", "afn", "nsz"}}


def _exp_into(src, dst, bits):
    """`dst[:] = exp(src)`; for float32 a vectorisable version (see the overload)."""
    for i in range(src.shape[0]):
        dst[i] = math.exp(src[i])


def _exp_into_f32(src, dst, bits):
    # exp(x) = 2^k exp(r), k = round(x / ln 2), |r| <= ln(2) / 2; exp(r) by its
    # degree-7 Taylor polynomial (rel. error < 1e-7) and 2^k by writing the
    # exponent bits. All arithmetic, so LLVM vectorises it, where a libm expf
    # call per value does not.
    f32 = np.float32
    for i in range(src.shape[0]):
        x = src[i]
        x = min(x, f32(88.0))  # x first, so NaN propagates
        x = max(x, f32(-87.0))
        k = np.floor(x * f32(1.44269504088896341) + f32(0.5))
        r = x - k * f32(0.693359375) - k * f32(-2.12194440e-4)  # ln 2 in two parts
        p = f32(1.0 / 5040.0)
        p = p * r + f32(1.0 / 720.0)
        p = p * r + f32(1.0 / 120.0)
        p = p * r + f32(1.0 / 24.0)
        p = p * r + f32(1.0 / 6.0)
        p = p * r + f32(0.5)
        p = p * r + f32(1.0)
        p = p * r + f32(1.0)
        dst[i] = p
        bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    scale = bits.view(np.float32)
    for i in range(src.shape[0]):
        dst[i] *= scale[i]


@overload(_exp_into, jit_options=_JIT)
def _exp_into_overload(src, dst, bits):
    if src.dtype == types.float32:
        return _exp_into_f32
    return _exp_into


@numba.njit(inline="always", **_JIT)
def _shifted_exp_sum(vals, n_mix, peak, arg, e, total, bits):
    """The pieces of a log-sum-exp over the K mixtures, per latent dimension.

    Args:
        vals: (K * Z,) float, mixture-major (`vals[k * Z + d]`).
        n_mix: int, K.
        peak: (Z,) out, `max_k vals`.
        arg: (K * Z,) scratch.
        e: (K * Z,) out, `exp(vals - peak)`.
        total: (Z,) out, `sum_k e`; the log-sum-exp is `peak + log(total)`.
        bits: (K * Z,) int32 scratch for `_exp_into`.
    """
    z_size = peak.shape[0]
    peak[:] = vals[:z_size]
    for k in range(1, n_mix):
        vk = vals[k * z_size : (k + 1) * z_size]
        for d in range(z_size):
            peak[d] = max(peak[d], vk[d])
    for k in range(n_mix):
        for d in range(z_size):
            arg[k * z_size + d] = vals[k * z_size + d] - peak[d]
    _exp_into(arg, e, bits)
    total[:] = 0
    for k in range(n_mix):
        for d in range(z_size):
            total[d] += e[k * z_size + d]


@numba.njit(**_JIT)
def mdn_nll_kernel(raw, target, mask, n_mix, lo, hi, scale, grad, want_grad):
    """Masked NLL sum and its gradient, fused; single-threaded.

    Loops run over the latent dimension, contiguous in the head's `(3, K, Z)`
    layout, so they vectorise; only the two logs per (row, dimension) are
    scalar calls.

    Args:
        raw: (N, 3 * K * Z) float32/64 C-contiguous mixture head.
        target: (N, Z) float targets, same dtype.
        mask: (N,) float weights (0 drops a row), same dtype.
        n_mix: int, K.
        lo, hi: float, the log-sigma clamp.
        scale: float, factor of the gradient (1 / normaliser of the loss).
        grad: (N, 3 * K * Z) out: `scale * d(sum of masked NLL) / d raw`.
        want_grad: bool, fill `grad`.

    Returns:
        float64, sum over rows and dimensions of `mask * NLL`.
    """
    n_rows, z_size = target.shape
    kz = n_mix * z_size
    dtype = raw.dtype
    one = dtype.type(1.0)
    half = dtype.type(0.5)
    lo = dtype.type(lo)
    hi = dtype.type(hi)
    big = dtype.type(MAX_SQUARED_Z)
    c = dtype.type(HALF_LOG_2PI)
    # Per-row scratch, (K, Z) flattened.
    arg = np.empty(kz, dtype)
    e_pi = np.empty(kz, dtype)
    inv = np.empty(kz, dtype)
    zsc = np.empty(kz, dtype)
    lp = np.empty(kz, dtype)
    e_lp = np.empty(kz, dtype)
    bits = np.empty(kz, np.int32)
    m = np.empty(z_size, dtype)
    se = np.empty(z_size, dtype)
    log_norm = np.empty(z_size, dtype)
    best = np.empty(z_size, dtype)
    acc = np.empty(z_size, dtype)
    total = 0.0
    for n in range(n_rows):
        w = mask[n]
        row = raw[n]
        logit, mu, log_sigma = row[:kz], row[kz : 2 * kz], row[2 * kz :]
        if w == 0:
            if want_grad:
                grad[n, :] = 0
            continue
        y = target[n]
        # log-softmax of the logits over k, per dimension.
        _shifted_exp_sum(logit, n_mix, m, arg, e_pi, se, bits)
        for d in range(z_size):
            log_norm[d] = m[d] + math.log(se[d])
        # Component log densities; sigma clamped so the z-score stays finite.
        for i in range(kz):
            s = max(log_sigma[i], lo)  # value first, so NaN propagates
            arg[i] = -min(s, hi)
        _exp_into(arg, inv, bits)
        for k in range(n_mix):
            for d in range(z_size):
                i = k * z_size + d
                zi = (y[d] - mu[i]) * inv[i]
                z2 = zi * zi
                # A clamped z-score is a constant: zero it so the gradients
                # below (linear in it for mu, quadratic for sigma) see that.
                zsc[i] = zi if z2 < big else 0
                z2 = min(z2, big)
                lp[i] = logit[i] - log_norm[d] - half * z2 + arg[i] - c
        # log-sum-exp over k.
        _shifted_exp_sum(lp, n_mix, best, arg, e_lp, acc, bits)
        row_nll = 0.0
        for d in range(z_size):
            row_nll -= best[d] + math.log(acc[d])
        total += w * row_nll
        if want_grad:
            g = dtype.type(scale * w)
            g_row = grad[n]
            g_logit, g_mu, g_ls = g_row[:kz], g_row[kz : 2 * kz], g_row[2 * kz :]
            for k in range(n_mix):
                for d in range(z_size):
                    i = k * z_size + d
                    r = e_lp[i] / acc[d]  # posterior responsibility of component k
                    g_logit[i] = g * (e_pi[i] / se[d] - r)
                    g_mu[i] = -g * r * zsc[i] * inv[i]
                    inside = log_sigma[i] >= lo and log_sigma[i] <= hi
                    g_ls[i] = g * r * (one - zsc[i] * zsc[i]) if inside else 0
    return total


class MDNNLL(function_node.FunctionNode):
    """Masked mean NLL of a mixture head, fused on the CPU (first order only).

    The gradient is computed in the forward pass (it needs the same
    responsibilities) and scaled by the incoming gradient in backward.
    """

    def __init__(self, n_mix, lo, hi):
        self.n_mix = n_mix
        self.lo = lo
        self.hi = hi

    def forward_cpu(self, inputs):
        raw, target, mask = inputs
        raw = np.ascontiguousarray(raw)
        norm = max(float(mask.sum()) * target.shape[1], 1.0)
        want = chainer.config.enable_backprop
        grad = np.empty_like(raw) if want else np.empty((0, 0), raw.dtype)
        total = mdn_nll_kernel(
            raw,
            np.ascontiguousarray(target, raw.dtype),
            np.ascontiguousarray(mask, raw.dtype),
            self.n_mix,
            self.lo,
            self.hi,
            1.0 / norm,
            grad,
            want,
        )
        self._grad = grad
        return (np.asarray(total / norm, raw.dtype),)

    def backward(self, indexes, grad_outputs):
        (gy,) = grad_outputs
        grad = chainer.Variable(self._grad) * F.broadcast_to(gy, self._grad.shape)
        return grad, None, None


@numba.njit(**_JIT)
def sample_kernel(logit, mu, log_sigma, inv_tau, sqrt_tau, u, noise, out):
    """`lib.models.mdn_rnn.sample` for NumPy arrays, one agent at a time, vectorised over z.

    Args:
        logit, mu, log_sigma: (N, K, Z) float32 mixture parameters (any strides;
            z is contiguous in the views `split_mixture` makes).
        inv_tau, sqrt_tau: float32, 1 / tau and sqrt(tau).
        u: (N, Z) float32 uniform draws in [0, 1) that pick the components.
        noise: (N, Z) float32 standard normal draws.
        out: (N, Z) float32, out: the samples.
    """
    n_rows, n_mix, z_size = mu.shape
    arg = np.empty(n_mix * z_size, np.float32)
    weight = np.empty(n_mix * z_size, np.float32)
    bits = np.empty(n_mix * z_size, np.int32)
    m = np.empty(z_size, np.float32)
    threshold = np.empty(z_size, np.float32)
    chosen = np.empty(z_size, np.float32)
    for n in range(n_rows):
        for d in range(z_size):
            m[d] = logit[n, 0, d] * inv_tau
        for k in range(1, n_mix):
            for d in range(z_size):
                m[d] = max(m[d], logit[n, k, d] * inv_tau)
        for k in range(n_mix):
            for d in range(z_size):
                arg[k * z_size + d] = logit[n, k, d] * inv_tau - m[d]
        _exp_into(arg, weight, bits)
        threshold[:] = 0
        for k in range(n_mix):
            for d in range(z_size):
                threshold[d] += weight[k * z_size + d]
        for d in range(z_size):
            threshold[d] *= u[n, d]
            # First component whose cumulative weight exceeds u * total.
            pick = n_mix - 1
            acc = np.float32(0.0)
            for k in range(n_mix):
                acc += weight[k * z_size + d]
                if threshold[d] < acc:
                    pick = k
                    break
            arg[d] = log_sigma[n, pick, d]
            chosen[d] = mu[n, pick, d]
        _exp_into(arg[:z_size], weight[:z_size], bits[:z_size])
        for d in range(z_size):
            out[n, d] = chosen[d] + weight[d] * sqrt_tau * noise[n, d]
