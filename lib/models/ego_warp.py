"""The robot's own motion as a warp of its egocentric view.

The frame is drawn around the robot, facing up. One step of action a moves the robot
forward by d = (a0 + 1) / 2 * MAX_ADVANCE * dt along its heading, then turns it left by
delta = a1 * MAX_ROTATION * dt (the order of `socnavenv`'s step kernel). A point that
does not move in the room, at ego coordinates p_t (x forward, y left, metres), is then
at p_{t+1} = R(-delta) (p_t - (d, 0)). So the view at t + 1 samples the view at t at
p_t = R(delta) p_{t+1} + (d, 0): what a warp of the old map does, bilinearly, for any
map whose cells sit on a regular grid of the view (a frame's pixels, V's 6 x 6 latent
map). Walls and the goal follow it exactly; people move on their own.

`warp_taps` gives the warp as its four bilinear taps per new cell (the old cells it
reads and their weights), which `warp_maps` applies as a gather
(`lib.kernels.sparse_warp`, differentiable there as `warp`), on NumPy or CuPy;
`warp_matrix` writes the same warp as one dense (S², S²) matrix per agent, the
reference the taps are tested against. Outside the old view, the warp repeats the
nearest edge cell.
"""

from __future__ import annotations

import numpy as np
from chainer import backend

from lib.env import socnavenv as sn
from lib.kernels import sparse_warp


def ego_motion(actions, dt: float = sn.TIMESTEP):
    """(d, delta): forward move (m) and left turn (rad) of each action, each (B,).

    Args:
        actions: (B, 2) float in [-1, 1] (clipped as the environment clips them).
    """
    xp = backend.get_array_module(actions)
    a = xp.clip(xp.asarray(actions, np.float64), -1.0, 1.0)
    return (a[:, 0] + 1.0) * 0.5 * sn.MAX_ADVANCE * dt, a[:, 1] * sn.MAX_ROTATION * dt


def grid_offsets(side: int, view_size: float, image_size: int | None = None, centres=None):
    """(side,) float64: the ego coordinate (m) of each row (forward) or column (left) of
    a regular grid over the view, top row / left column first.

    Args:
        side: cells per side.
        view_size: metres the view covers.
        image_size: pixels per side of the frame (default `side`: the frame's pixels).
        centres: (side,) the cells' centres in pixels (continuous, 0 at the frame's
            top or left edge); default the centre of each of `side` equal parts.
    """
    image_size = side if image_size is None else image_size
    if centres is None:
        centres = (np.arange(side) + 0.5) * image_size / side
    return (0.5 * image_size - np.asarray(centres, np.float64)) * view_size / image_size


def conv_centres(image_size: int, layers: int, kernel: int, stride: int) -> np.ndarray:
    """The centres (pixels, continuous) of the cells of `layers` valid convolutions'
    output, the receptive field's middle of each (V's spatial map)."""
    c = np.arange(image_size) + 0.5
    for _ in range(layers):
        n = (len(c) - kernel) // stride + 1
        c = np.array([c[stride * o : stride * o + kernel].mean() for o in range(n)])
    return c


def warp_taps(actions, offsets):
    """(index, weight): the four old cells each new cell of the map shows after each
    agent's action, and their bilinear weights (cells row-major).

    Args:
        actions: (B, 2) float, NumPy or CuPy (the result is on the same device).
        offsets: (S,) the grid's ego coordinates (`grid_offsets`), evenly spaced and
            decreasing (top row forward, left column left).

    Returns:
        index (B, S², 4) int32, four distinct cells per row; weight (B, S², 4) float32,
        summing to 1 per row.
    """
    xp = backend.get_array_module(actions)
    offsets = np.asarray(offsets, np.float64)
    side = len(offsets)
    pitch = offsets[0] - offsets[1]
    d, delta = ego_motion(actions)
    rows = xp.asarray(np.repeat(offsets, side))  # x' of each new cell (forward)
    cols = xp.asarray(np.tile(offsets, side))  # y' (left)
    c, s = xp.cos(delta)[:, None], xp.sin(delta)[:, None]
    x = c * rows - s * cols + d[:, None]  # (B, S²) where each new cell was, old frame
    y = s * rows + c * cols
    fi = xp.clip((offsets[0] - x) / pitch, 0.0, side - 1.0)
    fj = xp.clip((offsets[0] - y) / pitch, 0.0, side - 1.0)
    # i0 <= S - 2, so the four corners are distinct cells
    i0 = xp.minimum(xp.floor(fi), side - 2).astype(np.int32)
    j0 = xp.minimum(xp.floor(fj), side - 2).astype(np.int32)
    wi, wj = fi - i0, fj - j0
    corner = i0 * side + j0
    index = xp.stack([corner, corner + 1, corner + side, corner + side + 1], axis=2)
    weight = xp.stack([(1 - wi) * (1 - wj), (1 - wi) * wj, wi * (1 - wj), wi * wj], axis=2).astype(
        np.float32
    )
    return index, weight


def composite_sources(actions, offsets):
    """(rows, cols): where each cell of the view after k actions was in the first view,
    as fractional cell indices (N, S²) float64, not clipped (outside [0, S - 1] the
    first view did not see it). One action gives the positions `warp_taps` interpolates.

    Args:
        actions: (N, k, 2) float NumPy, a_t .. a_{t+k-1} (k = 0: the identity).
        offsets: (S,) as `warp_taps`.
    """
    offsets = np.asarray(offsets, np.float64)
    actions = np.asarray(actions)
    side, n = len(offsets), actions.shape[0]
    pitch = offsets[0] - offsets[1]
    x = np.broadcast_to(np.repeat(offsets, side), (n, side * side)).copy()
    y = np.broadcast_to(np.tile(offsets, side), (n, side * side)).copy()
    for j in reversed(range(actions.shape[1])):  # the last action is undone first
        d, delta = ego_motion(actions[:, j])
        c, s = np.cos(delta)[:, None], np.sin(delta)[:, None]
        x, y = c * x - s * y + d[:, None], s * x + c * y
    return (offsets[0] - x) / pitch, (offsets[0] - y) / pitch


def composite_targets(actions, offsets) -> np.ndarray:
    """(N, 2, 3) float64: the affine map of fractional cell indices of the first view to
    the view after the k actions (N, k, 2), [row', col'] = M [row, col, 1]: where a
    point that stands still in the room appears (`composite_sources`'s inverse)."""
    offsets = np.asarray(offsets, np.float64)
    actions = np.asarray(actions)
    pitch = offsets[0] - offsets[1]
    n = actions.shape[0]
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # (row, col) of three points
    x = np.broadcast_to(offsets[0] - pts[:, 0] * pitch, (n, 3)).copy()
    y = np.broadcast_to(offsets[0] - pts[:, 1] * pitch, (n, 3)).copy()
    for j in range(actions.shape[1]):  # the first action first: p' = R(-delta)(p - (d, 0))
        d, delta = ego_motion(actions[:, j])
        c, s = np.cos(delta)[:, None], np.sin(delta)[:, None]
        x = x - d[:, None]
        x, y = c * x + s * y, -s * x + c * y
    r, q = (offsets[0] - x) / pitch, (offsets[0] - y) / pitch  # (N, 3) each
    out = np.empty((n, 2, 3))
    for i, v in enumerate((r, q)):
        out[:, i] = np.stack([v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 0]], axis=1)
    return out


def warp_matrix(actions, offsets) -> object:
    """(B, S², S²) float32: `warp_taps` as dense matrices, row i' holding the weights of
    the old cells that cell i' of the new map shows (the reference; M uses the taps).

    Args:
        actions: (B, 2) float, NumPy or CuPy (the result is on the same device).
        offsets: (S,) as `warp_taps`.
    """
    xp = backend.get_array_module(actions)
    index, weight = warp_taps(actions, offsets)
    b, cells, _ = index.shape
    out = xp.zeros((b, cells, cells), np.float32)
    bi = xp.arange(b)[:, None]
    ci = xp.arange(cells)[None, :]
    for q in range(index.shape[2]):
        out[bi, ci, index[..., q]] = weight[..., q]  # distinct corners: assignment adds
    return out


def warp_maps(maps, taps):
    """Applies `warp_taps`'s taps to (B, S², C) maps (NumPy, CuPy): (B, S², C) float32."""
    return sparse_warp.gather(maps, *taps)
