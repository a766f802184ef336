"""PyTorch twin of the pixel mover (lib/models/pixel_mover.py), for the speed ratios of
bench_models.py's `mover_train` and `mover_dream_b256`.

Not part of the project: run it from the reference venv, as ../shared/reference/
torch_ref.py is (see its README):

    ../ref-venv/bin/python benchmarks/torch_pixel_mover.py [--device cuda] [NAME ...]

The same network: five 3 x 3 convolutions of 24 channels (dilations 1, 2, 4, 8, 1, ReLU)
over [frame t, frame t - 1, their difference], a 1 x 1 convolution to the 2-channel
velocity field; each dreamed step samples the field and then the frame bilinearly
(`grid_sample`, align_corners=True) at the composite ego-motion's points (NumPy, as the
project computes them) moved back by k steps of the velocity. Prints one JSON line per
workload, {"name", "per_sec"}, through torch_map_rnn.py's timing and entry point.
"""

import math
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torch_map_rnn as twin  # this folder: its `bench`, `main` and device (twin.DEV)
from torch import nn

S, CH, DILATIONS = 64, 24, (1, 2, 4, 8, 1)
OFFSETS = (0.5 * S - (np.arange(S) + 0.5)) * 8.0 / S  # the pixels' ego coordinates (m)
MAX_ADVANCE, MAX_ROTATION, DT = 1.4, 0.5 * math.pi, 0.1


def composite_sources(actions):
    """(rows, cols) fractional pixel indices in frame t of each pixel of frame t + k."""
    n = actions.shape[0]
    pitch = OFFSETS[0] - OFFSETS[1]
    x = np.broadcast_to(np.repeat(OFFSETS, S), (n, S * S)).copy()
    y = np.broadcast_to(np.tile(OFFSETS, S), (n, S * S)).copy()
    for j in reversed(range(actions.shape[1])):
        a = np.clip(actions[:, j], -1, 1)
        d, delta = (a[:, 0] + 1) * 0.5 * MAX_ADVANCE * DT, a[:, 1] * MAX_ROTATION * DT
        c, s = np.cos(delta)[:, None], np.sin(delta)[:, None]
        x, y = c * x - s * y + d[:, None], s * x + c * y
    return (OFFSETS[0] - x) / pitch, (OFFSETS[0] - y) / pitch


class Mover(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv2d(9 if i == 0 else CH, CH, 3, padding=d, dilation=d)
            for i, d in enumerate(DILATIONS)
        )
        self.out = nn.Conv2d(CH, 2, 1)

    def field(self, cur, prev):
        h = torch.cat([cur, prev, cur - prev], 1)
        for layer in self.layers:
            h = F.relu(layer(h))
        return self.out(h)

    def render(self, u, cur, actions):
        k = actions.shape[1]
        rows, cols = composite_sources(actions)
        rows, cols = np.clip(rows, 0, S - 1), np.clip(cols, 0, S - 1)
        grid = np.stack([cols, rows], -1).reshape(-1, S, S, 2) * (2.0 / (S - 1)) - 1.0
        grid = torch.tensor(grid, dtype=torch.float32, device=twin.DEV)
        uq = F.grid_sample(u, grid, align_corners=True)
        step = torch.stack([uq[:, 1], uq[:, 0]], -1) * (k * 2.0 / (S - 1))
        return F.grid_sample(cur, grid - step, align_corners=True)


def inputs(rng, n, k):
    cur = torch.tensor(rng.uniform(0, 1, (n, 3, S, S)), dtype=torch.float32, device=twin.DEV)
    prev = torch.tensor(rng.uniform(0, 1, (n, 3, S, S)), dtype=torch.float32, device=twin.DEV)
    return cur, prev, rng.uniform(-1, 1, (n, k, 2))


def mover_train():
    rng = np.random.default_rng(0)
    model = Mover().to(twin.DEV)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    cur, prev, acts = inputs(rng, 16, 8)
    targets = torch.tensor(
        rng.uniform(0, 1, (16, 8, 3, S, S)), dtype=torch.float32, device=twin.DEV
    )

    def step():
        u = model.field(cur, prev)
        loss = 0
        for k in range(1, 9):
            loss = loss + ((model.render(u, cur, acts[:, :k]) - targets[:, k - 1]) ** 2).mean()
        opt.zero_grad()
        (loss / 8).backward()
        opt.step()

    return 16 / twin.bench(step, 3)


def mover_dream_b256():
    rng = np.random.default_rng(0)
    model = Mover().to(twin.DEV)
    cur, prev, acts = inputs(rng, 256, 10)

    @torch.no_grad()
    def dream():
        u = model.field(cur, prev)
        for k in range(1, 11):
            model.render(u, cur, acts[:, :k])

    return 256 * 10 / twin.bench(dream, 1, 1, 3)


WORKLOADS = {"mover_train": mover_train, "mover_dream_b256": mover_dream_b256}


if __name__ == "__main__":
    twin.main(WORKLOADS, sys.argv[1:])
