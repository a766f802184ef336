"""Fast CPU convolution and transposed convolution for the VAE, inside Chainer.

Chainer's own `Convolution2D`/`Deconvolution2D` spend most of a VAE step in
im2col/col2im and `tensordot` over NCHW arrays, several times slower than
PyTorch on a small CPU. The functions here keep activations NHWC so that every
step is one large GEMM on contiguous memory:

- conv forward: im2col as a strided view copied once, one GEMM, bias and relu
  applied in place on the GEMM's output;
- conv backward: one GEMM for the weight gradient, one for the column gradient,
  and a numba col2im that adds the columns back into the input gradient;
- deconv forward: one GEMM from the input to columns, then a numba scatter that
  also adds the bias and applies the activation (no `col2im` + bias + relu
  passes over the output);
- deconv backward: im2col of the output gradient (a strided view again), then
  one GEMM each for the input and weight gradients.

Layouts (all C-contiguous):

| array            | conv                  | deconv                  |
|------------------|-----------------------|-------------------------|
| input `x`        | (B, H, W, C)          | (B, H, W, C)            |
| weight `W`       | (kh, kw, C, O)        | (C, kh, kw, O)          |
| bias `b`         | (O,)                  | (O,)                    |
| output `y`       | (B, Ho, Wo, O)        | (B, Ho, Wo, O)          |

with `Ho = (H - kh) // s + 1` for conv and `Ho = (H - 1) * s + kh` for deconv
(no padding, as in the World Models VAE). Chainer's layouts are (O, C, kh, kw)
for conv and (C, O, kh, kw) for deconv; `to_chainer_*`/`from_chainer_*` convert.

The links use these kernels for NumPy arrays and Chainer's own
`F.convolution_2d`/`F.deconvolution_2d` (through NCHW transposes) for anything
else, such as CuPy arrays; setting `chainer.config.fastconv = False` forces
that fallback on the CPU too, which is how the tests and benchmarks compare the
two. The backward passes are first-order only (no double backprop).

Three more things make it fast on a small CPU:

- Cache-sized chunks. Every pass walks the batch a chunk of frames at a time
  (`_CHUNK_BYTES` of columns), so a GEMM's output is still in cache when the
  scatter, col2im or the bias and relu read it, and the GEMMs themselves run
  faster on cache-sized operands.
- Threads without a fight. numba runs single-threaded (`NUMBA_NUM_THREADS=1`,
  set by `lib.kernels.runtime`); the GIL-free numba kernels and NumPy's copies are
  split over the batch on plain Python threads, one per core, between GEMMs
  that OpenBLAS runs on all cores. That only pays because `lib.kernels.runtime` makes
  OpenBLAS's idle threads sleep; when it could not (NumPy imported before
  `lib`), `runtime.kernel_threads()` is 1 and the kernels run on one thread.
- One BLAS call per GEMM. The GEMMs go through `lib.kernels.blas.gemm` (SciPy's
  bundled OpenBLAS), and the weight gradients accumulate in the GEMM (beta = 1),
  with no temporary.
"""

import chainer
import chainer.functions as F
import numba
import numpy as np
from chainer import initializers

from lib.kernels import blas, runtime

ACTIVATIONS = (None, "relu", "sigmoid")
_ACT_CODE = {None: 0, "relu": 1, "sigmoid": 2}

# Batch chunk sizes are chosen so that one chunk's column buffer fits in the
# shared L3 cache (32 MiB here) with room for the GEMM's other operands.
_CHUNK_BYTES = 8 << 20


# ---------------------------------------------------------------------------
# numba kernels
# ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _col2im(gcol, stride, n_c, gx):
    """Adds columns back into an image: the adjoint of `_im2col`.

    Args:
        gcol: (B, Ho, Wo, kh, kw * C) float, column gradient.
        stride: int.
        n_c: int, the number of channels C.
        gx: (B, H, W * C) float, output; overwritten.
    """
    n_b, n_oh, n_ow, kh, row = gcol.shape
    step = stride * n_c
    for b in range(n_b):
        gx[b] = 0.0
        for oh in range(n_oh):
            for ow in range(n_ow):
                base = ow * step
                for i in range(kh):
                    dst = gx[b, oh * stride + i]
                    src = gcol[b, oh, ow, i]
                    for t in range(row):
                        dst[base + t] += src[t]


@numba.njit(cache=True, nogil=True)
def _col2im_dilated(gcol, stride, dilate, gx):
    """`_col2im` of a dilated window: the adjoint of `_im2col(..., dilate)`.

    Args:
        gcol: (B, Ho, Wo, kh, kw, C) float, column gradient.
        stride, dilate: ints.
        gx: (B, H, W, C) float, output; overwritten.
    """
    n_b, n_oh, n_ow, kh, kw, n_c = gcol.shape
    for b in range(n_b):
        gx[b] = 0.0
        for oh in range(n_oh):
            for ow in range(n_ow):
                for i in range(kh):
                    for j in range(kw):
                        dst = gx[b, oh * stride + i * dilate, ow * stride + j * dilate]
                        src = gcol[b, oh, ow, i, j]
                        for c in range(n_c):
                            dst[c] += src[c]


@numba.njit(cache=True, nogil=True)
def _deconv_scatter(cols, bias, stride, act, y):
    """Scatters deconv columns into the output, adds the bias, applies `act`.

    Args:
        cols: (B, H, W, kh, kw * O) float, `x @ W` per input pixel.
        bias: (O,) float.
        stride: int.
        act: int, 0 none, 1 relu, 2 sigmoid.
        y: (B, Ho, Wo * O) float, output; overwritten.
    """
    n_b, n_h, n_w, kh, row = cols.shape
    n_o = bias.shape[0]
    n_yrow = y.shape[2]
    step = stride * n_o
    for b in range(n_b):
        yb = y[b]
        # Start from the bias so that it costs no extra pass.
        for r in range(yb.shape[0]):
            for t in range(0, n_yrow, n_o):
                for o in range(n_o):
                    yb[r, t + o] = bias[o]
        for h in range(n_h):
            for w in range(n_w):
                base = w * step
                for i in range(kh):
                    dst = yb[h * stride + i]
                    src = cols[b, h, w, i]
                    for t in range(row):
                        dst[base + t] += src[t]
        if act == 1:
            for r in range(yb.shape[0]):
                for t in range(n_yrow):
                    yb[r, t] = max(yb[r, t], 0.0)
        elif act == 2:
            for r in range(yb.shape[0]):
                for t in range(n_yrow):
                    yb[r, t] = 1.0 / (1.0 + np.exp(-yb[r, t]))


@numba.njit(cache=True, nogil=True)
def _act_backward(gy, y, act, gz, gb):
    """Gradient through the activation, and the bias gradient, in one pass.

    Args:
        gy: (N, O) float, gradient w.r.t. the activation's output.
        y: (N, O) float, the activation's output.
        act: int, 0 none, 1 relu, 2 sigmoid.
        gz: (N, O) float, output: gradient w.r.t. the pre-activation.
        gb: (O,) float64, output: column sums of `gz`.
    """
    n, n_o = gy.shape
    gb[:] = 0.0
    for r in range(n):
        for o in range(n_o):
            g = gy[r, o]
            if act == 1:
                if y[r, o] <= 0.0:
                    g = 0.0
            elif act == 2:
                g = g * y[r, o] * (1.0 - y[r, o])
            gz[r, o] = g
            gb[o] += g


@numba.njit(cache=True, nogil=True)
def _bias_act(y, bias, act):
    """y = act(y + bias), in place.

    Args:
        y: (N, O) float, GEMM output.
        bias: (O,) float.
        act: int, 0 none, 1 relu, 2 sigmoid.
    """
    n, n_o = y.shape
    for r in range(n):
        for o in range(n_o):
            v = y[r, o] + bias[o]
            if act == 1:
                v = max(v, 0.0)
            elif act == 2:
                v = 1.0 / (1.0 + np.exp(-v))
            y[r, o] = v


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------


def _threads():
    return runtime.kernel_threads()


# ---------------------------------------------------------------------------
# array helpers
# ---------------------------------------------------------------------------


def _out_size(size, k, s, dilate=1):
    return (size - dilate * (k - 1) - 1) // s + 1


def _im2col(x, kh, kw, stride, out=None, dilate=1):
    """Columns of every output position of a valid, strided (and dilated) 2-D window.

    Args:
        x: (B, H, W, C) C-contiguous float array.
        kh, kw, stride: ints.
        out: optional C-contiguous array of B * Ho * Wo * kh * kw * C
            elements to write into.
        dilate: the window's taps are this many pixels apart.

    Returns:
        (B, Ho, Wo, kh, kw * C) C-contiguous float array; its rows reshape to
        (B * Ho * Wo, kh * kw * C) for a GEMM against (kh, kw, C, O) weights.
    """
    n_b, n_h, n_w, n_c = x.shape
    n_oh, n_ow = _out_size(n_h, kh, stride, dilate), _out_size(n_w, kw, stride, dilate)
    sb, sh, sw, sc = x.strides
    if dilate == 1:
        # Within one window row, kw pixels of C channels are one contiguous run.
        shape = (n_b, n_oh, n_ow, kh, kw * n_c)
        strides = (sb, sh * stride, sw * stride, sh, sc)
    else:
        shape = (n_b, n_oh, n_ow, kh, kw, n_c)
        strides = (sb, sh * stride, sw * stride, sh * dilate, sw * dilate, sc)
    view = np.lib.stride_tricks.as_strided(x, shape, strides)
    col = np.empty(view.shape, x.dtype) if out is None else out.reshape(view.shape)
    runtime.parallel_ranges(lambda lo, hi: np.copyto(col[lo:hi], view[lo:hi]), n_b)
    return col.reshape(n_b, n_oh, n_ow, kh, kw * n_c)


def _chunks(n_b, bytes_per_item):
    step = max(1, _CHUNK_BYTES // max(1, bytes_per_item))
    return [(i, min(n_b, i + step)) for i in range(0, n_b, step)]


def _bias_act_parallel(y, bias, act):
    """y = act(y + bias) in place; y (N, O), bias (O,)."""
    runtime.parallel_ranges(lambda lo, hi: _bias_act(y[lo:hi], bias, act), y.shape[0])


def _act_backward_parallel(gy, y, act):
    """(gz, gb): gradient through the activation and the bias gradient.

    Args:
        gy: (N, O) float, gradient w.r.t. the activation's output.
        y: (N, O) float, the activation's output (ignored when act is 0).
        act: int, 0 none, 1 relu, 2 sigmoid.

    Returns:
        gz: (N, O) array of gy's dtype; gb: (O,) array of gy's dtype.
    """
    n, n_o = gy.shape
    gz = np.empty_like(gy)
    partial_sums = {}

    def run(lo, hi):
        partial_sums[lo] = part = np.empty(n_o, np.float64)
        _act_backward(gy[lo:hi], y[lo:hi], act, gz[lo:hi], part)

    runtime.parallel_ranges(run, n)
    # Summed in a fixed order, so the result does not depend on thread timing.
    gb = sum(partial_sums[lo] for lo in sorted(partial_sums))
    return gz, np.asarray(gb).astype(gy.dtype)


def _act_code(activation):
    return _ACT_CODE[activation]


# ---------------------------------------------------------------------------
# FunctionNodes
# ---------------------------------------------------------------------------


class _StridedNHWC(chainer.function_node.FunctionNode):
    """What the convolution and its transpose share: stride, fused activation, and the
    type check of (x NHWC, w, b), where w's axis `IN_AXIS` holds x's channels."""

    IN_AXIS = 2

    def __init__(self, stride, activation):
        self.stride = stride
        self.activation = activation

    def check_type_forward(self, in_types):
        x_type, w_type, b_type = in_types
        chainer.utils.type_check.expect(
            x_type.dtype.kind == "f",
            w_type.dtype == x_type.dtype,
            b_type.dtype == x_type.dtype,
            x_type.ndim == 4,
            w_type.ndim == 4,
            b_type.ndim == 1,
            x_type.shape[3] == w_type.shape[self.IN_AXIS],
            b_type.shape[0] == w_type.shape[3],
        )

    def _pre_activation_grad(self, gy, n_o):
        """(gz, gb): the gradient through the fused activation, (rows, n_o), and the
        bias's, from the output gradient `gy` (rows, n_o)."""
        if self.activation is None:
            y2 = gy  # unused by the kernel
        else:
            y2 = self.get_retained_outputs()[0].array.reshape(-1, n_o)
        return _act_backward_parallel(gy, y2, _act_code(self.activation))

    @staticmethod
    def _variables(indexes, gx, x_shape, gw, w_shape, gb):
        """backward's result: the gradients asked for in `indexes`, as Variables."""
        ret = [None, None, None]
        if gx is not None:
            ret[0] = chainer.Variable(gx.reshape(x_shape))
        if gw is not None:
            ret[1] = chainer.Variable(gw.reshape(w_shape))
        if 2 in indexes:
            ret[2] = chainer.Variable(gb)
        return ret


class Conv2DNHWC(_StridedNHWC):
    """Valid strided 2-D convolution on NHWC arrays with a fused activation
    (w: kh, kw, in, out); `dilate` spaces the window's taps."""

    def __init__(self, stride, activation, dilate=1):
        super().__init__(stride, activation)
        self.dilate = int(dilate)

    def _out_hw(self, n_h, n_w, kh, kw):
        return _out_size(n_h, kh, self.stride, self.dilate), _out_size(
            n_w, kw, self.stride, self.dilate
        )

    def forward_cpu(self, inputs):
        x, w, b = inputs
        x = np.ascontiguousarray(x)
        kh, kw, n_c, n_o = w.shape
        n_b, n_h, n_w, _ = x.shape
        n_oh, n_ow = self._out_hw(n_h, n_w, kh, kw)
        w2 = np.ascontiguousarray(w).reshape(kh * kw * n_c, n_o)
        b = np.ascontiguousarray(b)
        act = _act_code(self.activation)
        self._x_shape = x.shape
        rows, width = n_oh * n_ow, kh * kw * n_c
        y = np.empty((n_b * rows, n_o), x.dtype)
        # Training keeps all the columns for the weight gradient; inference
        # needs one chunk's worth at a time.
        keep = chainer.config.enable_backprop
        col = np.empty((n_b * rows, width), x.dtype) if keep else None
        # One cache-sized chunk of frames at a time: the GEMM reads the columns
        # just written, and its output stays in cache for the bias and relu.
        for lo, hi in _chunks(n_b, rows * width * x.itemsize):
            out = col[lo * rows : hi * rows] if keep else None
            chunk = _im2col(x[lo:hi], kh, kw, self.stride, out, self.dilate).reshape(-1, width)
            yc = y[lo * rows : hi * rows]
            blas.gemm(chunk, w2, yc, threads=_threads())
            _bias_act_parallel(yc, b, act)
        self._col = col
        self.retain_inputs((1,))
        if self.activation is not None:
            self.retain_outputs((0,))
        return (y.reshape(n_b, n_oh, n_ow, n_o),)

    def backward(self, indexes, grad_outputs):
        (w,) = self.get_retained_inputs()
        w = w.array
        kh, kw, n_c, n_o = w.shape
        gy = np.ascontiguousarray(grad_outputs[0].array).reshape(-1, n_o)
        gz, gb = self._pre_activation_grad(gy, n_o)
        w2 = w.reshape(kh * kw * n_c, n_o)
        n_b, n_h, n_w, _ = self._x_shape
        n_oh, n_ow = self._out_hw(n_h, n_w, kh, kw)
        rows, width = n_oh * n_ow, kh * kw * n_c
        gx = np.empty((n_b, n_h, n_w * n_c), gz.dtype) if 0 in indexes else None
        gw = np.zeros((width, n_o), gz.dtype) if 1 in indexes else None
        # Chunked so that both GEMMs work on cache-sized pieces and col2im
        # reads the column gradient back from cache.
        for lo, hi in _chunks(n_b, rows * width * gz.itemsize):
            gzc = gz[lo * rows : hi * rows]
            if gw is not None:
                col = self._col[lo * rows : hi * rows]
                blas.gemm(col, gzc, gw, trans_a=True, accumulate=True, threads=_threads())
            if gx is not None:
                gcol = np.empty((len(gzc), width), gz.dtype)
                blas.gemm(gzc, w2, gcol, trans_b=True, threads=_threads())
                gxc = gx[lo:hi]
                if self.dilate == 1:
                    gcol = gcol.reshape(hi - lo, n_oh, n_ow, kh, kw * n_c)

                    def kernel(a, z, gcol=gcol, gxc=gxc):
                        _col2im(gcol[a:z], self.stride, n_c, gxc[a:z])

                else:
                    gcol = gcol.reshape(hi - lo, n_oh, n_ow, kh, kw, n_c)
                    g4 = gxc.reshape(hi - lo, n_h, n_w, n_c)

                    def kernel(a, z, gcol=gcol, g4=g4):
                        _col2im_dilated(gcol[a:z], self.stride, self.dilate, g4[a:z])

                runtime.parallel_ranges(kernel, hi - lo)
        return self._variables(indexes, gx, self._x_shape, gw, w.shape, gb)


class Deconv2DNHWC(_StridedNHWC):
    """Strided 2-D transposed convolution on NHWC arrays with a fused activation
    (w: in, kh, kw, out)."""

    IN_AXIS = 0

    def forward_cpu(self, inputs):
        x, w, b = inputs
        n_c, kh, kw, n_o = w.shape
        n_b, n_h, n_w, _ = x.shape
        s = self.stride
        n_oh, n_ow = (n_h - 1) * s + kh, (n_w - 1) * s + kw
        x2 = np.ascontiguousarray(x).reshape(n_b, n_h * n_w, n_c)
        w2 = np.ascontiguousarray(w).reshape(n_c, kh * kw * n_o)
        y = np.empty((n_b, n_oh, n_ow * n_o), x.dtype)
        b = np.ascontiguousarray(b)
        act = _act_code(self.activation)
        # A cache-sized chunk of columns at a time: the scatter then reads them
        # back from cache rather than from memory.
        per_item = n_h * n_w * kh * kw * n_o * x.itemsize
        for lo, hi in _chunks(n_b, per_item):
            cols = np.empty(((hi - lo) * n_h * n_w, kh * kw * n_o), x.dtype)
            blas.gemm(x2[lo:hi].reshape(-1, n_c), w2, cols, threads=_threads())
            cols = cols.reshape(hi - lo, n_h, n_w, kh, kw * n_o)
            yc = y[lo:hi]
            runtime.parallel_ranges(
                lambda a, z: _deconv_scatter(cols[a:z], b, s, act, yc[a:z]),  # noqa: B023
                hi - lo,
            )
        self.retain_inputs((0, 1))
        if self.activation is not None:
            self.retain_outputs((0,))
        return (y.reshape(n_b, n_oh, n_ow, n_o),)

    def backward(self, indexes, grad_outputs):
        x, w = (v.array for v in self.get_retained_inputs())
        n_c, kh, kw, n_o = w.shape
        gy = np.ascontiguousarray(grad_outputs[0].array)
        y_shape = gy.shape
        gz, gb = self._pre_activation_grad(gy.reshape(-1, n_o), n_o)
        gz = gz.reshape(y_shape)
        w2 = w.reshape(n_c, kh * kw * n_o)
        x2 = x.reshape(-1, n_c)
        n_b, n_h, n_w, _ = x.shape
        rows = n_h * n_w
        gx = np.empty((n_b * rows, n_c), gz.dtype) if 0 in indexes else None
        gw = np.zeros((n_c, kh * kw * n_o), gz.dtype) if 1 in indexes else None
        # The columns of the output gradient are exactly a conv's im2col; a
        # cache-sized chunk of them at a time feeds both GEMMs from cache.
        for lo, hi in _chunks(n_b, rows * kh * kw * n_o * gz.itemsize):
            gcol = _im2col(gz[lo:hi], kh, kw, self.stride).reshape(-1, kh * kw * n_o)
            if gx is not None:
                blas.gemm(gcol, w2, gx[lo * rows : hi * rows], trans_b=True, threads=_threads())
            if gw is not None:
                x2c = x2[lo * rows : hi * rows]
                blas.gemm(x2c, gcol, gw, trans_a=True, accumulate=True, threads=_threads())
        return self._variables(indexes, gx, x.shape, gw, w.shape, gb)


# ---------------------------------------------------------------------------
# functions (with the fallback to Chainer's own convolution)
# ---------------------------------------------------------------------------


def use_fast(x):
    """Whether the CPU fast paths apply to `x` (an array or a Variable): NumPy data, and
    `chainer.config.fastconv` not False (the switch the tests and benchmarks use to
    compare with Chainer's own functions). `lib.kernels.sampler`, `splat` and `box`
    follow it too."""
    array = x.array if isinstance(x, chainer.Variable) else x
    return isinstance(array, np.ndarray) and getattr(chainer.config, "fastconv", True)


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _activate(h, activation):
    if activation == "relu":
        return F.relu(h)
    if activation == "sigmoid":
        return F.sigmoid(h)
    return h


def _apply(node_class, chainer_op, w_perm, x, W, b, stride, activation, **kw):
    """`node_class`'s fused node where it runs (`use_fast`), else Chainer's `chainer_op`
    on NCHW transposes (W's axes permuted by `w_perm`), then the activation; `kw` go to
    both (a convolution's dilate)."""
    _check_activation(activation)
    if use_fast(x):
        return node_class(stride, activation, **kw).apply((x, W, b))[0]
    h = chainer_op(F.transpose(x, (0, 3, 1, 2)), F.transpose(W, w_perm), b, stride=stride, **kw)
    return F.transpose(_activate(h, activation), (0, 2, 3, 1))


def conv2d_nhwc(x, W, b, stride=2, activation="relu", dilate=1):
    """Valid strided convolution of NHWC frames, then an activation.

    Args:
        x: (B, H, W, C) float Variable or array.
        W: (kh, kw, C, O) float Variable or array.
        b: (O,) float Variable or array.
        stride: int, the same along both axes.
        activation: None, "relu" or "sigmoid".
        dilate: the window's taps are this many pixels apart (pad `x` for a "same"
            output, e.g. by `dilate` for a 3 x 3 window).

    Returns:
        (B, Ho, Wo, O) Variable, `Ho = (H - dilate (kh - 1) - 1) // stride + 1`.
    """
    kw = {"dilate": int(dilate)} if dilate != 1 else {}
    return _apply(Conv2DNHWC, F.convolution_2d, (3, 2, 0, 1), x, W, b, stride, activation, **kw)


def deconv2d_nhwc(x, W, b, stride=2, activation="relu"):
    """Strided transposed convolution of NHWC maps, then an activation; the
    transpose of `conv2d_nhwc`, whose arguments it shares except for `W`, here
    (C, kh, kw, O). Returns (B, Ho, Wo, O), `Ho = (H - 1) * stride + kh`.
    """
    return _apply(Deconv2DNHWC, F.deconvolution_2d, (0, 3, 1, 2), x, W, b, stride, activation)


# ---------------------------------------------------------------------------
# layout conversion and links
# ---------------------------------------------------------------------------


def from_chainer_conv(W):
    """(O, C, kh, kw) Chainer conv weights -> (kh, kw, C, O), contiguous."""
    return np.ascontiguousarray(np.transpose(W, (2, 3, 1, 0)))


def to_chainer_conv(W):
    """(kh, kw, C, O) weights -> (O, C, kh, kw) Chainer conv layout, contiguous."""
    return np.ascontiguousarray(np.transpose(W, (3, 2, 0, 1)))


def from_chainer_deconv(W):
    """(C, O, kh, kw) Chainer deconv weights -> (C, kh, kw, O), contiguous."""
    return np.ascontiguousarray(np.transpose(W, (0, 2, 3, 1)))


def to_chainer_deconv(W):
    """(C, kh, kw, O) weights -> (C, O, kh, kw) Chainer deconv layout, contiguous."""
    return np.ascontiguousarray(np.transpose(W, (0, 3, 1, 2)))


class _Permuted(chainer.initializer.Initializer):
    """Draws weights in Chainer's layout, then permutes them into ours.

    So a link here starts from the same distribution (fan-in included) as the
    Chainer link it replaces.
    """

    def __init__(self, base, chainer_shape, axes):
        super().__init__()
        self.base = base
        self.chainer_shape = chainer_shape
        self.axes = axes

    def __call__(self, array):
        tmp = np.empty(self.chainer_shape, dtype=array.dtype)
        self.base(tmp)
        array[...] = chainer.backend.get_array_module(array).asarray(np.transpose(tmp, self.axes))


def _as_initializer(value):
    """What `L.Convolution2D`'s `initialW` accepts, as an initializer: None gives
    LeCunNormal, an array or a scalar a Constant, an initializer itself. (Chainer's
    links do this with a private helper; these are its rules, with public classes.)"""
    if value is None:
        return initializers.LeCunNormal()
    if isinstance(value, chainer.get_array_types()) or np.isscalar(value):
        return initializers.Constant(value)
    if not callable(value):
        raise TypeError(f"invalid initializer: {type(value).__name__}")
    return value


class _NHWCLink(chainer.Link):
    """What the two links share: W initialised in Chainer's layout, then permuted to
    this module's, and b at zeros (created in that order, as Chainer's links do).
    Subclasses set `_transposed` (W's Chainer layout (C, O, k, k) instead of
    (O, C, k, k)), `_perm` (the axes of that layout in this module's) and `_op`.

    Args:
        in_channels, out_channels, ksize, stride, activation, initialW: as in the
            subclasses.
    """

    _transposed: bool
    _perm: tuple

    def __init__(
        self, in_channels, out_channels, ksize, stride=2, activation="relu", initialW=None
    ):
        super().__init__()
        self.stride = stride
        self.activation = activation
        pair = (in_channels, out_channels) if self._transposed else (out_channels, in_channels)
        chainer_shape = (*pair, ksize, ksize)
        with self.init_scope():
            self.W = chainer.Parameter(
                _Permuted(_as_initializer(initialW), chainer_shape, self._perm),
                tuple(chainer_shape[a] for a in self._perm),
            )
            self.b = chainer.Parameter(0.0, (out_channels,))

    def forward(self, x):
        """(B, H, W, C) float -> (B, Ho, Wo, O) Variable."""
        return self._op(x, self.W, self.b, self.stride, self.activation)


class ConvolutionNHWC(_NHWCLink):
    """`L.Convolution2D` (no padding) for NHWC input, with a fused activation.

    Args:
        in_channels: int, C.
        out_channels: int, O.
        ksize: int, square kernel size.
        stride: int.
        activation: None, "relu" or "sigmoid".
        initialW: Chainer initializer in Chainer's (O, C, kh, kw) layout;
            LeCunNormal by default, as in `L.Convolution2D`.

    Attributes:
        W: (k, k, C, O) float32 Parameter.
        b: (O,) float32 Parameter, zeros at start.
    """

    _transposed = False
    _perm = (2, 3, 1, 0)
    _op = staticmethod(conv2d_nhwc)


class DeconvolutionNHWC(_NHWCLink):
    """`L.Deconvolution2D` (no padding) for NHWC input, with a fused activation.

    Arguments as `ConvolutionNHWC`'s, except that `initialW` draws in Chainer's
    (C, O, kh, kw) layout for deconvolutions, and W is (C, k, k, O).
    """

    _transposed = True
    _perm = (0, 2, 3, 1)
    _op = staticmethod(deconv2d_nhwc)
