"""A whole sequence of a warped convolutional LSTM as one Chainer `FunctionNode`.

The map M (`lib.models.map_rnn.MapRNN`) steps a convolutional LSTM over an S x S map
and warps its state by each step's ego-motion (the robot's own motion). Built from Chainer
functions, each step is about 25 graph nodes, forward and backward: at the map's
sizes the graph, not the arithmetic, takes most of the time. Here the whole sequence
is one node:

- forward, per step: the gates' "same" convolution of [x_t, h] as one im2col (k²
  slices of the zero-padded NHWC map, concatenated) and one GEMM, the gate arithmetic
  in array ops, and the warp of (h, c) as a gather of four bilinear taps per cell
  (`lib.kernels.sparse_warp`);
- backward through time, per step: the same in reverse (the warp's transpose, a
  scatter-add, the
  gates' derivatives, one GEMM back to the columns and k² slice-adds back to the map),
  with the weight gradient summed over all steps in one GEMM at the end.

Only the weights get gradients: the inputs x (the data's z, the actions, the cells'
coordinates), the warps and the initial state are constants (the state at a
truncated-BPTT boundary is cut, as 04 does).

Layouts (C-contiguous): x (B, T, S, S, Cx); W (k, k, Cx + Ch, 4 Ch) (the project's NHWC
convolution layout, `lib.kernels.fastconv`), input channels x's first, then h's; gate
blocks a, i, f, o of Ch each; b (4 Ch,); taps, index (B, T, S², 4) int32 and weight
(B, T, S², 4) float32 (`lib.models.ego_warp.warp_taps`); h0, c0 (B, S² Ch)
flat maps, cell-major. Array ops only, so it runs on NumPy and CuPy alike.
"""

from __future__ import annotations

import chainer
from chainer import backend, function_node

from lib.kernels import sparse_warp


def _sigmoid(xp, x):
    return 0.5 * xp.tanh(0.5 * x) + 0.5  # overflow-free, one transcendental


def _im2col(xp, maps, k):
    """(B, S, S, C) -> (B * S², k² C) columns of a "same" k x k convolution."""
    b, s, _, c = maps.shape
    p = k // 2
    padded = xp.zeros((b, s + 2 * p, s + 2 * p, c), maps.dtype)
    padded[:, p : p + s, p : p + s] = maps
    cols = [padded[:, i : i + s, j : j + s] for i in range(k) for j in range(k)]
    return xp.concatenate(cols, axis=3).reshape(b * s * s, k * k * c)


def _col2im(xp, cols, b, s, c, k):
    """The transpose of `_im2col`: (B * S², k² C) -> (B, S, S, C)."""
    p = k // 2
    cols = cols.reshape(b, s, s, k * k, c)
    padded = xp.zeros((b, s + 2 * p, s + 2 * p, c), cols.dtype)
    for n, (i, j) in enumerate((i, j) for i in range(k) for j in range(k)):
        padded[:, i : i + s, j : j + s] += cols[:, :, :, n]
    return padded[:, p : p + s, p : p + s]


def cell_step(x, h, c, w, b, taps):
    """One step, no graph: the gates, the update, then the warp.

    Args:
        x: (B, S, S, Cx) inputs; h, c: (B, S² Ch) warped state of the last step.
        w: (k, k, Cx + Ch, 4 Ch); b: (4 Ch,); taps: (index, weight), each (B, S², 4).

    Returns:
        (h, c, cache): the new warped state, two (B, S² Ch), and what backward needs.
    """
    xp = backend.get_array_module(x)
    n, s, _, _ = x.shape
    k, ch = w.shape[0], w.shape[3] // 4
    maps = xp.concatenate([x, h.reshape(n, s, s, ch)], axis=3)
    cols = _im2col(xp, maps, k)
    g = (cols @ w.reshape(-1, 4 * ch) + b).reshape(n, s * s, 4, ch)
    a = xp.tanh(g[:, :, 0])
    i, f, o = (_sigmoid(xp, g[:, :, q]) for q in (1, 2, 3))
    c_prev = c.reshape(n, s * s, ch)
    c_pre = f * c_prev + i * a
    tc = xp.tanh(c_pre)
    h_pre = o * tc
    h_new = sparse_warp.gather(h_pre, *taps).reshape(n, -1)
    c_new = sparse_warp.gather(c_pre, *taps).reshape(n, -1)
    return h_new, c_new, (cols, a, i, f, o, c_prev, tc)


class MapLSTM(function_node.FunctionNode):
    """apply((w, b), x=..., taps=..., h0=..., c0=...) -> (hs (B, T, S² Ch), h, c, cs).

    cs, the warped cell state after every step, is for reading (the states a rollout
    starts from): it carries no gradient."""

    def __init__(self, x, taps, h0, c0):
        self.x, self.taps, self.h0, self.c0 = x, taps, h0, c0

    def forward(self, inputs):
        w, b = inputs
        h, c = self.h0, self.c0
        steps = self.x.shape[1]
        xp = backend.get_array_module(w)
        hs, cs = [], []
        self.caches = []
        keep = chainer.config.enable_backprop
        for t in range(steps):
            taps = tuple(v[:, t] for v in self.taps)
            h, c, cache = cell_step(self.x[:, t], h, c, w, b, taps)
            hs.append(h)
            cs.append(c)
            if keep:
                self.caches.append(cache)
        self.retain_inputs((0,))
        return xp.stack(hs, axis=1), h, c, xp.stack(cs, axis=1)

    def backward(self, indexes, grad_outputs):
        (w,) = self.get_retained_inputs()
        w = w.array
        xp = backend.get_array_module(w)
        g_hs, g_h, g_c, g_cs = (None if g is None else g.array for g in grad_outputs)
        if g_cs is not None:
            raise ValueError("map_lstm's cs carry no gradient: read them as arrays")
        n, steps, s = self.x.shape[:3]
        cx = self.x.shape[4]
        k, ch = w.shape[0], w.shape[3] // 4
        w2 = w.reshape(-1, 4 * ch)
        dh = xp.zeros((n, s * s, ch), w.dtype) if g_h is None else g_h.reshape(n, s * s, ch)
        dc = xp.zeros((n, s * s, ch), w.dtype) if g_c is None else g_c.reshape(n, s * s, ch)
        d_gates, cols_all = [], []
        for t in reversed(range(steps)):
            cols, a, i, f, o, c_prev, tc = self.caches[t]
            if g_hs is not None:
                dh = dh + g_hs[:, t].reshape(n, s * s, ch)
            index, weight = (v[:, t] for v in self.taps)
            dh_pre = sparse_warp.scatter(dh, index, weight)
            dc_pre = sparse_warp.scatter(dc, index, weight) + dh_pre * o * (1 - tc * tc)
            dg = xp.stack(
                [
                    dc_pre * i * (1 - a * a),
                    dc_pre * a * i * (1 - i),
                    dc_pre * c_prev * f * (1 - f),
                    dh_pre * tc * o * (1 - o),
                ],
                axis=2,
            ).reshape(n * s * s, 4 * ch)
            d_gates.append(dg)
            cols_all.append(cols)
            dmaps = _col2im(xp, dg @ w2.T, n, s, cx + ch, k)
            dh = dmaps[..., cx:].reshape(n, s * s, ch)
            dc = dc_pre * f
        dg = xp.concatenate(d_gates)
        gw = (xp.concatenate(cols_all).T @ dg).reshape(w.shape)
        gb = dg.sum(axis=0)
        self.caches = []
        return chainer.Variable(gw), chainer.Variable(gb)


def map_lstm(x, w, b, taps, h0, c0):
    """The warped convolutional LSTM over whole sequences (see the module docstring).

    Args:
        x: (B, T, S, S, Cx) float32 array; w: (k, k, Cx + Ch, 4 Ch) and b: (4 Ch,)
            Variables (Parameters); taps: (index, weight), (B, T, S², 4) int32 and
            float32 arrays (`lib.models.ego_warp.warp_taps`); h0, c0: (B, S² Ch)
            float32 arrays.

    Returns:
        (hs, h, c, cs): Variables, hs (B, T, S² Ch) the warped h after every step, the
        last step's (h, c), each (B, S² Ch), and cs (B, T, S² Ch) the warped c after
        every step (no gradient: read `cs.array`).
    """
    return MapLSTM(x, taps, h0, c0).apply((w, b))
