"""Whole-sequence LSTM as one Chainer `FunctionNode`, fast on the CPU.

A Python loop of `L.LSTM` builds a graph node per time step and per op, and runs
each step's input projection as its own small GEMM; on a 2-core CPU most of its
time is graph overhead. Here the sequence is one node:

- forward: the input projection of all time steps is one big GEMM; the
  recurrence is a loop of one `(B, H) x (H, 4H)` GEMM and one fused numba kernel
  for the gate arithmetic per step;
- backward through time: one GEMM and one fused kernel per step, then the
  gradients of W_x, W_h (and x, only when it needs one) for all steps as big
  GEMMs over B*T rows at the end.

In float32 the kernels use a rational approximation of tanh (absolute error
< 4e-7, the float32 rounding scale) that LLVM can vectorise; float64 uses libm.

Gates follow Chainer's order `a, i, f, o` (cell input, input, forget, output),
stored in contiguous blocks of `H` (`W[0:H]` is `a`, `W[H:2H]` is `i`, ...)
rather than interleaved as `F.lstm` expects, so the kernels stream over
contiguous memory. `to_chainer_lstm_order` converts.

On a GPU (CuPy arrays) the same function runs as a loop of `F.lstm` with the
weights reordered, which Chainer fuses into one CUDA kernel per step.
"""

import math

import chainer
import chainer.functions as F
import numba
import numpy as np
from chainer import backend, function_node
from chainer.utils import type_check
from numba import types
from numba.extending import overload

from lib.kernels import runtime

# error_model="numpy" drops numba's division-by-zero check, whose branch would
# stop LLVM from vectorising the loops; the fastmath flags allow contraction and
# approximate reciprocals but keep NaN/inf semantics, so a diverging run still
# shows NaN in its loss instead of being clamped into finite garbage.
_JIT = {"cache": True, "error_model": "numpy", "fastmath": {"contract", "arcp", "afn", "nsz"}}


def _tanh(x):
    """tanh; in numba float32 code a vectorisable rational approximation."""
    return math.tanh(x)


def _tanh_f32(x):
    # Rational minimax approximation of tanh on [-7.9, 7.9] (beyond it tanh is 1
    # in float32), max abs error ~3e-7: pure arithmetic, so LLVM vectorises it,
    # where a libm tanhf call per element costs ~10x more.
    clamp = np.float32(7.90531110763549805)
    # x first: min/max return their first argument when it is NaN, so NaN
    # propagates as it does through math.tanh.
    x = min(x, clamp)
    x = max(x, -clamp)
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


@overload(_tanh, jit_options=_JIT)
def _tanh_overload(x):
    if x == types.float32:
        return _tanh_f32
    return lambda x: math.tanh(x)


# The step kernels below are written as several short loops over slices that
# start at 0, not one fused loop: with one loop over many arrays LLVM gives up
# on the runtime alias checks it needs to vectorise, and indices that start at
# a runtime offset keep numba's negative-index wraparound in the loop. Split
# this way they run ~5x faster; each row stays in L1 between the loops.


@numba.njit(**_JIT)
def _forward_step(t, pre, xw, c0, gates, cs, hs, half):
    """One LSTM step from the summed pre-activations, in place.

    Args:
        t: int, the time step.
        pre: (B, 4H) float, `h_{t-1} @ Wh.T` for this step.
        xw: (B, T, 4H) float, `x @ Wx.T + b` for all steps.
        c0: (B, H) float, initial cell state (used at t = 0).
        gates: (B, T, 4H) float, out at t: activated gates `a, i, f, o`.
        cs: (B, T, H) float, out at t: cell states.
        hs: (B, T, H) float, out at t: hidden states.
        half: 0.5 in the array dtype, so float32 maths stays float32.
    """
    batch, hidden = c0.shape
    for n in range(batch):
        c_prev = cs[n, t - 1] if t > 0 else c0[n]
        p, u, g = pre[n], xw[n, t], gates[n, t]
        c_t, h_t = cs[n, t], hs[n, t]
        p_a, p_s = p[:hidden], p[hidden:]
        u_a, u_s = u[:hidden], u[hidden:]
        g_a, g_s = g[:hidden], g[hidden:]
        g_i, g_f, g_o = g[hidden : 2 * hidden], g[2 * hidden : 3 * hidden], g[3 * hidden :]
        for j in range(hidden):
            g_a[j] = _tanh(p_a[j] + u_a[j])
        # i, f, o: sigmoid(x) = (1 + tanh(x / 2)) / 2, which never overflows.
        for j in range(3 * hidden):
            g_s[j] = half * _tanh(half * (p_s[j] + u_s[j])) + half
        for j in range(hidden):
            c_t[j] = g_a[j] * g_i[j] + g_f[j] * c_prev[j]
        for j in range(hidden):
            h_t[j] = g_o[j] * _tanh(c_t[j])


@numba.njit(**_JIT)
def _backward_step(t, dh, dc, g_hs, gates, cs, c0, dpre, one):
    """Backward of one LSTM step, in place.

    Args:
        t: int, the time step.
        dh: (B, H) float, gradient of `h_t` from step t + 1 and the final state.
        dc: (B, H) float, gradient of `c_t`; overwritten with that of `c_{t-1}`.
        g_hs: (B, T, H) float gradient of the outputs, or (0, 0, 0) if none.
        gates: (B, T, 4H) float, activated gates saved by the forward pass.
        cs: (B, T, H) float, cell states saved by the forward pass.
        c0: (B, H) float, initial cell state.
        dpre: (B, T, 4H) float, out at t: gradient of the gate pre-activations.
        one: 1 in the array dtype.
    """
    batch, hidden = dh.shape
    use_g_hs = g_hs.shape[0] > 0
    for n in range(batch):
        c_prev = cs[n, t - 1] if t > 0 else c0[n]
        g, c_t, d = gates[n, t], cs[n, t], dpre[n, t]
        dh_n, dc_n = dh[n], dc[n]
        g_a, g_i, g_f, g_o = (
            g[:hidden],
            g[hidden : 2 * hidden],
            g[2 * hidden : 3 * hidden],
            g[3 * hidden :],
        )
        d_a, d_i, d_f, d_o = (
            d[:hidden],
            d[hidden : 2 * hidden],
            d[2 * hidden : 3 * hidden],
            d[3 * hidden :],
        )
        if use_g_hs:
            g_h = g_hs[n, t]
            for j in range(hidden):
                dh_n[j] += g_h[j]
        for j in range(hidden):
            d_o[j] = dh_n[j] * _tanh(c_t[j]) * g_o[j] * (one - g_o[j])
        for j in range(hidden):
            tc = _tanh(c_t[j])
            dc_n[j] += dh_n[j] * g_o[j] * (one - tc * tc)
        for j in range(hidden):
            d_a[j] = dc_n[j] * g_i[j] * (one - g_a[j] * g_a[j])
        for j in range(hidden):
            d_i[j] = dc_n[j] * g_a[j] * g_i[j] * (one - g_i[j])
        for j in range(hidden):
            d_f[j] = dc_n[j] * c_prev[j] * g_f[j] * (one - g_f[j])
        for j in range(hidden):
            dc_n[j] *= g_f[j]


def lstm_step_numpy(x, h, c, w_x, w_h, b):
    """One LSTM step on NumPy arrays, without a graph (inference fast path).

    Args:
        x: (B, I) float32 input.
        h: (B, H) float32 hidden state.
        c: (B, H) float32 cell state.
        w_x: (4H, I) float32 input weights, blocked gate order `a, i, f, o`.
        w_h: (4H, H) float32 recurrent weights.
        b: (4H,) float32 bias.

    Returns:
        (h_new, c_new): two (B, H) float32 arrays.
    """
    pre = h @ w_h.T
    xw = x @ w_x.T
    xw += b
    batch, hidden = h.shape
    gates = np.empty((batch, 1, 4 * hidden), pre.dtype)
    c_new = np.empty((batch, 1, hidden), pre.dtype)
    h_new = np.empty((batch, 1, hidden), pre.dtype)
    half = pre.dtype.type(0.5)
    _forward_step(0, pre, xw[:, None], np.ascontiguousarray(c), gates, c_new, h_new, half)
    return h_new[:, 0], c_new[:, 0]


class FastLSTM(function_node.FunctionNode):
    """Whole-sequence LSTM on the CPU; see the module docstring."""

    def check_type_forward(self, in_types):
        # Names the inputs in type errors: the (private) call every Chainer function
        # makes here, with no public equivalent in Chainer 7.
        type_check._argname(in_types, ("x", "w_x", "w_h", "b", "h0", "c0"))
        x, w_x, w_h, b, h0, c0 = in_types
        type_check.expect(
            x.dtype.kind == "f",
            x.ndim == 3,
            x.shape[1] > 0,
            w_x.dtype == x.dtype,
            w_h.dtype == x.dtype,
            b.dtype == x.dtype,
            h0.dtype == x.dtype,
            c0.dtype == x.dtype,
            w_x.ndim == 2,
            w_h.ndim == 2,
            b.ndim == 1,
            h0.ndim == 2,
            c0.ndim == 2,
            w_x.shape[1] == x.shape[2],
            w_h.shape[0] == 4 * w_h.shape[1],
            w_x.shape[0] == w_h.shape[0],
            b.shape[0] == w_h.shape[0],
            h0.shape[0] == x.shape[0],
            h0.shape[1] == w_h.shape[1],
            c0.shape == h0.shape,
        )

    def forward_cpu(self, inputs):
        runtime.follow_load()  # a safe point: NumPy's BLAS takes the current thread count
        x, w_x, w_h, b, h0, c0 = inputs
        batch, steps, _ = x.shape
        hidden = w_h.shape[1]
        dtype = x.dtype
        # All input projections at once: one (B*T, I) x (I, 4H) GEMM.
        xw = (x.reshape(batch * steps, -1) @ w_x.T).reshape(batch, steps, 4 * hidden)
        xw += b
        w_h_t = np.ascontiguousarray(w_h.T)
        gates = np.empty((batch, steps, 4 * hidden), dtype)
        cs = np.empty((batch, steps, hidden), dtype)
        hs = np.empty((batch, steps, hidden), dtype)
        pre = np.empty((batch, 4 * hidden), dtype)
        h_prev = h0
        c0 = np.ascontiguousarray(c0)
        half = dtype.type(0.5)
        for t in range(steps):
            # Strided (B, H) views are fine for BLAS: rows are contiguous.
            np.matmul(h_prev, w_h_t, out=pre)
            _forward_step(t, pre, xw, c0, gates, cs, hs, half)
            h_prev = hs[:, t]
        self._gates = gates
        self._cs = cs
        self.retain_inputs((0, 1, 2, 4, 5))
        self.retain_outputs((0,))
        return hs, hs[:, -1].copy(), cs[:, -1].copy()

    def forward_gpu(self, inputs):
        raise NotImplementedError("FastLSTM is CPU-only; fast_lstm() falls back on GPU")

    def backward(self, indexes, grad_outputs):
        x, w_x, w_h, h0, c0 = self.get_retained_inputs()
        (hs,) = self.get_retained_outputs()
        # FunctionNode inputs cannot be None: pass only the gradients that exist.
        present = tuple(g is not None for g in grad_outputs)
        grad = FastLSTMGrad(self._gates, self._cs, present, indexes).apply(
            (x, w_x, w_h, h0, c0, hs) + tuple(g for g in grad_outputs if g is not None)
        )
        self._gates = self._cs = None
        return grad


class FastLSTMGrad(function_node.FunctionNode):
    """Backward through time of `FastLSTM` (first order only)."""

    def __init__(self, gates, cs, present, needed):
        self._gates = gates
        self._cs = cs
        self._present = present  # which of (g_hs, g_h, g_c) are inputs
        self._needed = needed  # indexes into (x, w_x, w_h, b, h0, c0) to return

    def forward_cpu(self, inputs):
        x, w_x, w_h, h0, c0, hs = inputs[:6]
        rest = iter(inputs[6:])
        g_hs, g_h, g_c = (next(rest) if p else None for p in self._present)
        batch, steps, _ = x.shape
        hidden = w_h.shape[1]
        dtype = x.dtype
        gates, cs = self._gates, self._cs
        dpre = np.empty((batch, steps, 4 * hidden), dtype)
        dh = np.zeros((batch, hidden), dtype)
        dc = np.zeros((batch, hidden), dtype)
        if g_h is not None:
            dh += g_h
        if g_c is not None:
            dc += g_c
        w_h_c = np.ascontiguousarray(w_h)
        c0 = np.ascontiguousarray(c0)
        g_hs = np.zeros((0, 0, 0), dtype) if g_hs is None else np.ascontiguousarray(g_hs)
        one = dtype.type(1)
        for t in range(steps - 1, -1, -1):
            _backward_step(t, dh, dc, g_hs, gates, cs, c0, dpre, one)
            np.matmul(dpre[:, t], w_h_c, out=dh)
        # Gradients of all steps at once: big GEMMs over B*T rows, each only if
        # asked for (the data x usually needs none).
        flat = dpre.reshape(batch * steps, 4 * hidden)
        out = []
        for i in self._needed:
            if i == 0:
                out.append((flat @ w_x).reshape(x.shape))
            elif i == 1:
                out.append(flat.T @ x.reshape(batch * steps, -1))
            elif i == 2:
                h_prev = np.empty_like(hs)
                h_prev[:, 0] = h0
                h_prev[:, 1:] = hs[:, :-1]
                out.append(flat.T @ h_prev.reshape(batch * steps, hidden))
            elif i == 3:
                out.append(flat.sum(axis=0))
            else:
                out.append(dh if i == 4 else dc)
        return tuple(out)

    def backward(self, indexes, grad_outputs):
        raise NotImplementedError("double backprop through FastLSTM is not supported")


def to_chainer_lstm_order(w):
    """Reorder blocked gates `a, i, f, o` to `F.lstm`'s interleaved layout.

    Args:
        w: (4H, ...) array or Variable with gates in blocks of H rows.

    Returns:
        (4H, ...) the same rows, ordered unit by unit `a_0, i_0, f_0, o_0, a_1, ...`.
    """
    four_h = w.shape[0]
    rest = w.shape[1:]
    w = F.reshape(w, (4, four_h // 4) + rest)
    w = F.swapaxes(w, 0, 1)
    return F.reshape(w, (four_h,) + rest)


def lstm_loop(x, w_x, w_h, b, h0, c0):
    """Reference and GPU path: a Python loop of `F.lstm`, same maths as `fast_lstm`.

    Args and returns as `fast_lstm`.
    """
    batch, steps, _ = x.shape
    w_x = to_chainer_lstm_order(w_x)
    w_h = to_chainer_lstm_order(w_h)
    b = to_chainer_lstm_order(b)
    xw = F.reshape(F.linear(F.reshape(x, (batch * steps, -1)), w_x, b), (batch, steps, -1))
    h, c = h0, c0
    hs = []
    for t in range(steps):
        c, h = F.lstm(c, xw[:, t] + F.linear(h, w_h))
        hs.append(h)
    return F.stack(hs, axis=1), h, c


def fast_lstm(x, w_x, w_h, b, h0=None, c0=None):
    """Run an LSTM over whole sequences.

    Gates are in blocked order `a, i, f, o` (see the module docstring):
    `c_t = tanh(a) sigmoid(i) + sigmoid(f) c_{t-1}`, `h_t = sigmoid(o) tanh(c_t)`.
    Gradients flow to every input, so truncated BPTT can carry `(h, c)` from
    one chunk into the next (call `unchain` on them to cut the graph).

    Args:
        x: (B, T, I) float Variable or array, batch-major inputs.
        w_x: (4H, I) input weights.
        w_h: (4H, H) recurrent weights.
        b: (4H,) bias.
        h0: (B, H) initial hidden state; zeros when None.
        c0: (B, H) initial cell state; zeros when None.

    Returns:
        (hs, h, c): hs (B, T, H) all hidden states; h and c (B, H) the final
        state. All Variables of the input dtype.
    """
    x_arr = x.array if isinstance(x, chainer.Variable) else x
    xp = backend.get_array_module(x_arr)
    batch = x_arr.shape[0]
    hidden = w_h.shape[1]
    if h0 is None:
        h0 = xp.zeros((batch, hidden), x_arr.dtype)
    if c0 is None:
        c0 = xp.zeros((batch, hidden), x_arr.dtype)
    if xp is not np:
        return lstm_loop(x, w_x, w_h, b, h0, c0)
    return FastLSTM().apply((x, w_x, w_h, b, h0, c0))
