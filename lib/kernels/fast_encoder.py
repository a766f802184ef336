"""V's encoder for inference on the CPU, fast at the batch sizes of control.

`ConvVAE.encode` runs through Chainer and `lib.kernels.fastconv`, which is built for
training batches: at the 1 to 128 frames of a control step it spends its time
in GEMMs that OpenBLAS splits badly over two cores, in per-layer
`FunctionNode` bookkeeping and in passes over memory between layers.
`FastEncoder` computes the same (mu, logvar) with three changes:

- Data parallel. The batch is encoded in fixed chunks of `CHUNK` frames,
  dealt to one thread per core; each thread runs the whole encoder on its
  chunks with a single-threaded BLAS (`lib.kernels.blas`: SciPy's newer OpenBLAS,
  10-27 % faster than NumPy's on these GEMMs), so the cores never wait for
  each other between layers. The numba kernels and NumPy's GEMMs release the GIL. A
  frame's result depends on the batch size (GEMM rounding depends on a
  GEMM's shape) but never on the number of threads.
- First layer straight from uint8. A numba kernel reads the frames' bytes and
  convolves them with weights pre-scaled by 1/255, with bias and relu fused:
  no float copy of the frames, no column matrix.
- Fewer multiplications. Every later layer is a 4x4 stride-2 convolution,
  which is a 2x2 stride-1 convolution over a space-to-depth view of its input
  (2x2 pixel blocks stacked into 4C channels). That is computed with
  Winograd's minimal filtering F(m x m, 2 x 2): (m + 1)^2 GEMMs of
  (tiles, 4C) x (4C, O) per m x m block of outputs where direct convolution
  needs the work of 4m^2, so 0.56 of the multiplications with m = 2 (second
  and fourth convs) and 0.44 with m = 3 (third conv, whose 6x6 output splits
  into 3x3 tiles). The transforms' coefficients are 0, +-1 and 1/2, which
  add no rounding beyond a few ulps. The input transform reads the NHWC
  activations directly (the space-to-depth view is never built) and the
  output transform adds the bias and applies relu.
- Only what is read. The first conv's output is 31x31, but the second conv
  reads only its top-left 30x30: the last row and column are not computed.

Layers that do not fit (kernel other than 4, stride other than 2, an odd
output side) fall back to im2col and one GEMM. Results agree with
`ConvVAE.encode` to about 1e-6 relative (tests/test_fast_encoder.py).

The weights are copied when the encoder is built: build a new one after V's
weights change. `make_encoder(vae)` returns a `FastEncoder` for a V on the CPU
and a thin wrapper around `vae.encode` otherwise (GPU).
"""

from __future__ import annotations

import chainer
import numba
import numpy as np

from lib.kernels import blas, runtime

# Frames per chunk: the batch is encoded this many frames at a time (see
# `FastEncoder.__call__`); large enough for efficient GEMMs, small enough that
# 64 agents make one chunk per core.
CHUNK = 32

# Frames per GEMM in the first layer (its columns stay in a core's L2 cache).
_FIRST_LAYER_FRAMES = 4

# Winograd's F(m x m, 2 x 2) for correlation, y = A^T [(G g G^T) * (B^T d B)] A,
# for m = 2 (3x3 input tiles, 9 products) and m = 3 (4x4 tiles, 16 products):
# m -> (B^T, G, A^T), from the points 0, 1, -1 (and infinity for m = 3).
WINOGRAD = {
    2: (
        np.array([[1, -1, 0], [0, 1, 0], [0, -1, 1]], np.float32),
        np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]),
        np.array([[1, 1, 0], [0, 1, 1]], np.float32),
    ),
    3: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], np.float32),
        np.array([[1.0, 0.0], [0.5, 0.5], [0.5, -0.5], [0.0, 1.0]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, 0], [0, 1, 1, 1]], np.float32),
    ),
}


# ---------------------------------------------------------------------------
# numba kernels
# ---------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _im2col_u8(frames, kernel, stride, n_out, col):
    """Columns of a valid strided window over uint8 frames, as float32.

    Args:
        frames: (N, H, W, C) uint8.
        kernel, stride: ints.
        n_out: output positions computed a side (the top-left n_out x n_out).
        col: (N * n_out * n_out, kernel * kernel * C) float32 output, rows
            ordered (n, oh, ow) and columns (i, j, c); overwritten.
    """
    n_b, n_h, n_w, n_c = frames.shape
    run = kernel * n_c
    row = np.empty(n_w * n_c, np.float32)
    for n in range(n_b):
        img = frames[n].reshape(n_h, n_w * n_c)
        for oh in range(n_out):
            first = (n * n_out + oh) * n_out
            for i in range(kernel):
                # One conversion of the source row, then runs of kernel * C.
                src = img[oh * stride + i]
                for t in range(row.shape[0]):
                    row[t] = src[t]
                for ow in range(n_out):
                    dst = col[first + ow, i * run : (i + 1) * run]
                    part = row[ow * stride * n_c : ow * stride * n_c + run]
                    for t in range(run):
                        dst[t] = part[t]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _winograd_input(x, v, t0):
    """B^T d B for every 3x3 tile of the space-to-depth view of `x`.

    Tile (ty, tx) covers space-to-depth positions (2ty + u, 2tx + s), u, s in
    0..2; position (r, s') holds the 4C values x[2r + p, 2s' + q, c] ordered
    (p, q, c), so for each p the (q, c) values are one contiguous run of 2C
    in a row of `x`: the transform reads rows of `x` directly.

    Args:
        x: (N, H, W, C) float32 activations, T = ((H - 4) // 2 + 1) // 2 tiles a side.
        v: (9, >= t0 + N * T * T, 4C) float32 output; rows t0 onwards overwritten.
        t0: the row of v for the first tile of x.
    """
    n_b, n_h, n_w, n_c = x.shape
    n_t = ((n_h - 4) // 2 + 1) // 2
    run = 2 * n_c
    for n in range(n_b):
        img = x[n].reshape(n_h, n_w * n_c)
        for ty in range(n_t):
            for tx in range(n_t):
                t = t0 + (n * n_t + ty) * n_t + tx
                for p in range(2):
                    # dUS: tile position (u, s), the 2C values (q, c) for this p.
                    # (Slicing first lets the loops below index from 0, which
                    # numba compiles to SIMD; offsets inside them would not be.)
                    r0 = img[4 * ty + p]
                    r1 = img[4 * ty + 2 + p]
                    r2 = img[4 * ty + 4 + p]
                    c0 = 4 * tx * n_c
                    c1, c2, c3 = c0 + run, c0 + 2 * run, c0 + 3 * run
                    d00, d01, d02 = r0[c0:c1], r0[c1:c2], r0[c2:c3]
                    d10, d11, d12 = r1[c0:c1], r1[c1:c2], r1[c2:c3]
                    d20, d21, d22 = r2[c0:c1], r2[c1:c2], r2[c2:c3]
                    vt = v[:, t, p * run : (p + 1) * run]
                    # Rows (d0 - d1, d1, d2 - d1), then the same along columns;
                    # one output at a time, so each loop has one store stream.
                    _sub4(vt[0], d00, d10, d01, d11)
                    _sub2(vt[1], d01, d11)
                    _sub4(vt[2], d02, d12, d01, d11)
                    _sub2(vt[3], d10, d11)
                    vt[4, :] = d11
                    _sub2(vt[5], d12, d11)
                    _sub4(vt[6], d20, d10, d21, d11)
                    _sub2(vt[7], d21, d11)
                    _sub4(vt[8], d22, d12, d21, d11)


@numba.njit(inline="always", fastmath=True)
def _sub2(dst, a, b):
    for k in range(dst.shape[0]):
        dst[k] = a[k] - b[k]


@numba.njit(inline="always", fastmath=True)
def _sub4(dst, a, b, c, d):
    """dst = (a - b) - (c - d)."""
    for k in range(dst.shape[0]):
        dst[k] = (a[k] - b[k]) - (c[k] - d[k])


@numba.njit(cache=True, nogil=True, fastmath=True)
def _winograd_output(m, b, y):
    """A^T M A for every tile, plus bias and relu, into NHWC output.

    Args:
        m: (9, N * T * T, O) float32, the nine GEMM products.
        b: (O,) float32.
        y: (N, 2T, 2T, O) float32 output; overwritten.
    """
    n_b, n_h, _, n_o = y.shape
    n_t = n_h // 2
    zero = np.float32(0.0)
    for n in range(n_b):
        for ty in range(n_t):
            for tx in range(n_t):
                t = (n * n_t + ty) * n_t + tx
                y00 = y[n, 2 * ty, 2 * tx]
                y01 = y[n, 2 * ty, 2 * tx + 1]
                y10 = y[n, 2 * ty + 1, 2 * tx]
                y11 = y[n, 2 * ty + 1, 2 * tx + 1]
                for o in range(n_o):
                    m0, m1, m2 = m[0, t, o], m[1, t, o], m[2, t, o]
                    m3, m4, m5 = m[3, t, o], m[4, t, o], m[5, t, o]
                    m6, m7, m8 = m[6, t, o], m[7, t, o], m[8, t, o]
                    y00[o] = max(m0 + m1 + m3 + m4 + b[o], zero)
                    y01[o] = max(m1 + m2 + m4 + m5 + b[o], zero)
                    y10[o] = max(m3 + m4 + m6 + m7 + b[o], zero)
                    y11[o] = max(m4 + m5 + m7 + m8 + b[o], zero)


@numba.njit(cache=True, nogil=True, fastmath=True)
def _winograd_input_any(x, bt, v, t0):
    """B^T d B for every tile, any F(m x m, 2 x 2): `_winograd_input` for
    m = 2 is the same with the coefficients written out (and faster).

    Args:
        x: (N, H, W, C) float32 activations.
        bt: (n, n) float32 B^T, n = m + 1: tiles of n x n space-to-depth
            positions, m apart; T = ((H - 4) // 2 + 1) // m tiles a side.
        v: (n * n, >= t0 + N * T * T, 4C) float32 output; rows t0 onwards
            overwritten.
        t0: the row of v for the first tile of x.
    """
    n_b, n_h, n_w, n_c = x.shape
    n = bt.shape[0]
    m = n - 1
    n_t = ((n_h - 4) // 2 + 1) // m
    run = 2 * n_c
    rows = np.empty((n, n, run), np.float32)  # B^T applied along the rows
    for b_ in range(n_b):
        img = x[b_].reshape(n_h, n_w * n_c)
        for ty in range(n_t):
            for tx in range(n_t):
                t = t0 + (b_ * n_t + ty) * n_t + tx
                for p in range(2):
                    for a in range(n):
                        for s in range(n):
                            dst = rows[a, s]
                            dst[:] = 0.0
                            c0 = 2 * (m * tx + s) * n_c
                            for u in range(n):
                                coef = bt[a, u]
                                if coef != 0.0:
                                    src = img[2 * (m * ty + u) + p, c0 : c0 + run]
                                    for k in range(run):
                                        dst[k] += coef * src[k]
                    for a in range(n):
                        for c in range(n):
                            dst = v[a * n + c, t, p * run : (p + 1) * run]
                            dst[:] = 0.0
                            for s in range(n):
                                coef = bt[c, s]
                                if coef != 0.0:
                                    src = rows[a, s]
                                    for k in range(run):
                                        dst[k] += coef * src[k]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _winograd_output_any(m_, at, b, y):
    """A^T M A for every tile, any F(m x m, 2 x 2), plus bias and relu.

    Args:
        m_: (n * n, N * T * T, O) float32, the GEMM products.
        at: (m, n) float32 A^T.
        b: (O,) float32.
        y: (N, mT, mT, O) float32 output; overwritten.
    """
    n_b, n_h, _, n_o = y.shape
    m, n = at.shape
    n_t = n_h // m
    rows = np.empty((m, n, n_o), np.float32)  # A^T applied along the rows
    acc = np.empty(n_o, np.float32)
    for b_ in range(n_b):
        for ty in range(n_t):
            for tx in range(n_t):
                t = (b_ * n_t + ty) * n_t + tx
                for i in range(m):
                    for c in range(n):
                        dst = rows[i, c]
                        dst[:] = 0.0
                        for a in range(n):
                            coef = at[i, a]
                            if coef != 0.0:
                                src = m_[a * n + c, t]
                                for o in range(n_o):
                                    dst[o] += coef * src[o]
                for i in range(m):
                    for j in range(m):
                        acc[:] = b
                        for c in range(n):
                            coef = at[j, c]
                            if coef != 0.0:
                                src = rows[i, c]
                                for o in range(n_o):
                                    acc[o] += coef * src[o]
                        dst = y[b_, m * ty + i, m * tx + j]
                        for o in range(n_o):
                            dst[o] = max(acc[o], np.float32(0.0))


@numba.njit(cache=True, nogil=True, fastmath=True)
def _bias_relu(y, b):
    """y = max(y + b, 0) in place; y (N, O), b (O,)."""
    n, n_o = y.shape
    for r in range(n):
        for o in range(n_o):
            y[r, o] = max(y[r, o] + b[o], np.float32(0.0))


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------


def _out_size(size, k, s):
    return (size - k) // s + 1


def winograd_weights(w, m=2):
    """U = G g G^T for a 4x4 stride-2 conv seen as 2x2 over space-to-depth.

    Args:
        w: (4, 4, C, O) conv weights (NHWC layout of `lib.kernels.fastconv`).
        m: output tile side of F(m x m, 2 x 2): 2 or 3.

    Returns:
        ((m + 1) ** 2, 4C, O) float32, the GEMM right-hand sides.
    """
    g_mat = WINOGRAD[m][1]
    n_c, n_o = w.shape[2], w.shape[3]
    # g[a, b] is the (p, q, c) x O slice W[2a + p, 2b + q, c, :].
    g = w.astype(np.float64).reshape(2, 2, 2, 2, n_c, n_o).transpose(0, 2, 1, 3, 4, 5)
    g = g.reshape(2, 2, 4 * n_c, n_o)
    u = np.einsum("ia,jb,abko->ijko", g_mat, g_mat, g)
    return np.ascontiguousarray(u.reshape(len(g_mat) ** 2, 4 * n_c, n_o), np.float32)


class _Layer:
    """One encoder conv with relu, applied to one part of the batch."""

    def __init__(self, w, b, stride, first):
        kh, kw, n_c, n_o = w.shape
        self.kernel, self.stride, self.n_o = kh, stride, n_o
        self.b = np.ascontiguousarray(b, np.float32)
        self.first = first
        # The first layer reads uint8 frames: its weights absorb the 1/255.
        scale = np.float32(1.0 / 255.0) if first else np.float32(1.0)
        self.w = np.ascontiguousarray(w * scale, np.float32).reshape(kh * kw * n_c, n_o)
        # Winograd right-hand sides by tile side m (none for other convs).
        winograd = not first and kh == kw == 4 and stride == 2
        self.u = {m: winograd_weights(w, m) for m in WINOGRAD} if winograd else {}

    def tile(self, side):
        """The Winograd tile side m for `side` outputs a side, or None (im2col)."""
        fits = [m for m in self.u if side % m == 0]
        return max(fits) if fits else None

    def __call__(self, x, side=None):
        """relu(conv(x) + b): (N, H, W, C) -> (N, side, side, O), where `side`
        (default: the whole output) keeps only the top-left outputs, the
        ones the next layer reads."""
        n_b, n_h, n_w, n_c = x.shape
        k, s = self.kernel, self.stride
        n_oh, n_ow = _out_size(n_h, k, s), _out_size(n_w, k, s)
        if side is not None:
            n_oh, n_ow = min(n_oh, side), min(n_ow, side)
        y = np.empty((n_b, n_oh, n_ow, self.n_o), np.float32)
        if self.first:  # square frames (FastEncoder checks them)
            # A few frames at a time, so the columns are still in cache for
            # the GEMM and the GEMM's output for the bias and relu.
            flat = y.reshape(n_b * n_oh * n_ow, self.n_o)
            rows = n_oh * n_ow
            for lo in range(0, n_b, _FIRST_LAYER_FRAMES):
                hi = min(n_b, lo + _FIRST_LAYER_FRAMES)
                col = np.empty(((hi - lo) * rows, len(self.w)), np.float32)
                _im2col_u8(x[lo:hi], k, s, n_oh, col)
                part = flat[lo * rows : hi * rows]
                blas.matmul(col, self.w, part)
                _bias_relu(part, self.b)
        elif n_oh == n_ow and self.tile(n_oh):
            return self.winograd([(0, x)], n_b, n_c, n_oh)
        else:
            sb, sh, sw, sc = x.strides
            view = np.lib.stride_tricks.as_strided(
                x, (n_b, n_oh, n_ow, k, k * n_c), (sb, sh * s, sw * s, sh, sc)
            )
            flat = y.reshape(n_b * n_oh * n_ow, self.n_o)
            blas.matmul(np.ascontiguousarray(view).reshape(len(flat), -1), self.w, flat)
            _bias_relu(flat, self.b)
        return y

    def winograd(self, parts, n_b, n_c, side):
        """The Winograd path of `__call__`, fed by parts of the batch.

        Args:
            parts: iterable of (first frame, (n, H, W, C) input of n frames),
                consumed in order; a generator can compute each part just
                before its transform reads it, while it is still in cache.
            n_b: frames in all parts; n_c: input channels; side: output side.

        Returns:
            (n_b, side, side, O) float32.
        """
        m = self.tile(side)
        bt, _, at = WINOGRAD[m]
        per_frame = (side // m) ** 2
        v = np.empty((len(bt) ** 2, n_b * per_frame, 4 * n_c), np.float32)
        for lo, x in parts:
            if m == 2:
                _winograd_input(x, v, lo * per_frame)
            else:
                _winograd_input_any(x, bt, v, lo * per_frame)
        prod = np.empty((len(bt) ** 2, n_b * per_frame, self.n_o), np.float32)
        blas.matmul(v, self.u[m], prod)
        y = np.empty((n_b, side, side, self.n_o), np.float32)
        if m == 2:
            _winograd_output(prod, self.b, y)
        else:
            _winograd_output_any(prod, at, self.b, y)
        return y


# ---------------------------------------------------------------------------
# the encoder
# ---------------------------------------------------------------------------


class FastEncoder:
    """(mu, logvar) of uint8 frames, for a `ConvVAE` on the CPU (see module doc).

    Args:
        vae: `ConvVAE`; its weights are copied now.
        threads: threads the chunks are dealt to; default
            `runtime.kernel_threads()` at each call (the cores, or 1 in a worker process
            given one BLAS thread).
        chunk: frames per chunk (`CHUNK`).
    """

    def __init__(self, vae, threads=None, chunk=CHUNK):
        cpu = chainer.backend.CpuDevice()
        self.z_size = vae.z_size
        self.image_size = vae.image_size
        self.in_channels = vae.in_channels
        self.layers = [
            _Layer(cpu.send(conv.W.array), cpu.send(conv.b.array), conv.stride, i == 0)
            for i, conv in enumerate(vae.enc)
        ]
        # Each layer computes only the outputs the next one reads (the first
        # conv's last row and column are never read by the second: 30 of 31).
        sides = [self.image_size]
        for layer in self.layers:
            sides.append(_out_size(sides[-1], layer.kernel, layer.stride))
        self.sides = sides[1:]
        for i in range(len(self.layers) - 2, -1, -1):
            nxt = self.layers[i + 1]
            self.sides[i] = min(self.sides[i], (self.sides[i + 1] - 1) * nxt.stride + nxt.kernel)
        # mu and logvar in one GEMM: (flat, 2z), or per cell (channels, 2K) for a
        # spatial latent (`ConvVAE(spatial=K)`).
        self.spatial = vae.spatial
        self.w_head = np.ascontiguousarray(
            np.concatenate([cpu.send(vae.mu.W.array), cpu.send(vae.logvar.W.array)]).T, np.float32
        )
        self.b_head = np.concatenate([cpu.send(vae.mu.b.array), cpu.send(vae.logvar.b.array)])
        self.threads = None if threads is None else max(1, int(threads))  # None: follow
        self.chunk = max(1, int(chunk))

    def _encode_part(self, frames):
        layers = list(zip(self.layers, self.sides))
        if len(layers) == 1:
            h = self.layers[0](frames, self.sides[0])
        elif layers[1][0].tile(layers[1][1]):
            (first, side0), (second, side1) = layers[:2]
            # The first conv a few frames at a time, each block's output read
            # by the second conv's input transform while still in cache.
            blocks = (
                (lo, first(frames[lo : lo + _FIRST_LAYER_FRAMES], side0))
                for lo in range(0, len(frames), _FIRST_LAYER_FRAMES)
            )
            h = second.winograd(blocks, len(frames), first.n_o, side1)
        else:
            h = layers[1][0](self.layers[0](frames, self.sides[0]), self.sides[1])
        for layer, side in layers[2:]:
            h = layer(h, side)
        if self.spatial:
            cells = np.ascontiguousarray(h.reshape(-1, h.shape[-1]))
            per_cell = np.empty((len(cells), len(self.b_head)), np.float32)
            blas.matmul(cells, self.w_head, per_cell)
            per_cell += self.b_head
            per_cell = per_cell.reshape(len(frames), -1, 2 * self.spatial)  # (B, S*S, 2K)
            k = self.spatial
            return np.concatenate(
                [
                    per_cell[..., :k].reshape(len(frames), -1),
                    per_cell[..., k:].reshape(len(frames), -1),
                ],
                axis=1,
            )
        out = np.empty((len(frames), len(self.b_head)), np.float32)
        blas.matmul(h.reshape(len(frames), -1), self.w_head, out)
        out += self.b_head
        return out

    def __call__(self, frames):
        """(mu, logvar), each (N, z_size) float32, of (N, H, W, C) uint8 frames."""
        frames = np.ascontiguousarray(frames)
        expected = (self.image_size, self.image_size, self.in_channels)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected:
            raise ValueError(
                f"FastEncoder takes (N, {expected[0]}, {expected[1]}, {expected[2]}) uint8 "
                f"frames, got {frames.dtype} {frames.shape}"
            )
        n = len(frames)
        out = np.empty((n, 2 * self.z_size), np.float32)
        # Fixed chunks of `chunk` frames (the last one shorter), dealt to the
        # threads in contiguous runs: each GEMM's shape, and so each frame's
        # result, depends on the batch size only, never on the thread count.
        starts = list(range(0, n, self.chunk))

        def run(first, last):
            for lo in starts[first:last]:
                hi = min(n, lo + self.chunk)
                out[lo:hi] = self._encode_part(frames[lo:hi])

        # One BLAS thread per caller: OpenBLAS's own threads cost far more than they
        # give on GEMMs this small. `lib.kernels.blas`
        # runs its GEMMs on the caller's thread; this also covers NumPy's
        # (single rows, or when SciPy's OpenBLAS is missing).
        threads = runtime.follow_load() if self.threads is None else self.threads
        with runtime.single_blas_thread():
            runtime.parallel_ranges(run, len(starts), threads)
        return out[:, : self.z_size], out[:, self.z_size :]


class _ChainerEncoder:
    """`vae.encode` with no graph, as arrays on V's device (GPU or fallback path).

    Frames may be on the host: `ConvVAE.to_float` sends them to V's device.
    """

    def __init__(self, vae):
        self.vae = vae

    def __call__(self, frames):
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            mu, logvar = self.vae.encode(frames)
        return mu.array, logvar.array


def make_encoder(vae):
    """A callable frames -> (mu, logvar), (B, z) float32 arrays on V's device.

    `FastEncoder` for a V on the CPU (unless `chainer.config.fastconv` is False),
    Chainer's own convolutions otherwise (a V on a GPU gives CuPy arrays, and a
    keypoint V, `ConvVAE(keypoints=K)`, whose head `FastEncoder` does not compute; a
    spatial-latent V's per-cell head it does)."""
    on_cpu = isinstance(vae.device, chainer.backend.CpuDevice)
    if on_cpu and getattr(chainer.config, "fastconv", True) and not vae.keypoints:
        return FastEncoder(vae)
    return _ChainerEncoder(vae)
