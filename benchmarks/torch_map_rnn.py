"""PyTorch twins of `make agent`'s Ms, for the speed ratios of bench_models.py.

Not part of the project: run it from the reference venv, as ../shared/reference/
torch_ref.py is (see its README):

    ../ref-venv/bin/python benchmarks/torch_map_rnn.py [--device cuda] [NAME ...]

Prints one JSON line per workload, {"name", "per_sec"}, with the names and units of
benchmarks/bench_models.py:

- map_rnn_train: sequence-steps/s, batch 32 x 100 steps, the map M
  (lib/models/map_rnn.py): z 6 x 6 x 8, a 3 x 3 convolutional LSTM of 16 channels over
  [z, a, the cells' coordinates, h], its (h, c) warped by the action's ego-motion (one
  batched matrix product with the same bilinear warp matrices), a per-cell mixture head
  (5 Gaussians) whose means are offsets from the warped z, the outcome and shaping
  heads; forward + backward + Adam(1e-3) + clip 1;
- map_dream_b1024: agent-steps/s, 1024 agents: one map-M step, sampling at tau 1 and a
  linear controller;
- rnn_train_agent, dream_b1024_agent: the same for the dense MDN-LSTM at those sizes
  (z 288, h 256, residual means, the outcome head).
"""

import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

S, K, CH, MIX, A = 6, 8, 16, 5, 2
Z = S * S * K
OFFSETS = np.array([2.625, 1.625, 0.625, -0.375, -1.375, -2.375])  # V's cells (m)
DEV = torch.device("cpu")
MAX_ADVANCE, MAX_ROTATION, DT = 1.4, 0.5 * math.pi, 0.1


def warp_matrix(actions):
    """(B, S², S²) bilinear warp of the view by each action's ego-motion (NumPy)."""
    a = np.clip(actions, -1, 1)
    d = (a[:, 0] + 1) * 0.5 * MAX_ADVANCE * DT
    delta = a[:, 1] * MAX_ROTATION * DT
    rows, cols = np.repeat(OFFSETS, S), np.tile(OFFSETS, S)
    c, s = np.cos(delta)[:, None], np.sin(delta)[:, None]
    x, y = c * rows - s * cols + d[:, None], s * rows + c * cols
    pitch = OFFSETS[0] - OFFSETS[1]
    fi = np.clip((OFFSETS[0] - x) / pitch, 0, S - 1)
    fj = np.clip((OFFSETS[0] - y) / pitch, 0, S - 1)
    i0, j0 = (
        np.minimum(np.floor(fi), S - 2).astype(int),
        np.minimum(np.floor(fj), S - 2).astype(int),
    )
    wi, wj = fi - i0, fj - j0
    out = np.zeros((len(a), S * S, S * S), np.float32)
    bi, ci = np.arange(len(a))[:, None], np.arange(S * S)[None]
    for di, dj, w in (
        (0, 0, (1 - wi) * (1 - wj)),
        (0, 1, (1 - wi) * wj),
        (1, 0, wi * (1 - wj)),
        (1, 1, wi * wj),
    ):
        out[bi, ci, (i0 + di) * S + (j0 + dj)] = w
    return out


def mdn_nll(raw, target):
    """raw (N, 3, MIX, Z), target (N, Z): mean NLL per dimension."""
    logit, mu, logs = raw[:, 0], raw[:, 1], raw[:, 2].clamp(-7, 4)
    t = target[:, None]
    lg = -0.5 * ((t - mu) * torch.exp(-logs)) ** 2 - logs - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(F.log_softmax(logit, 1) + lg, dim=1).mean()


class MapM(nn.Module):
    def __init__(self):
        super().__init__()
        self.gates = nn.Conv2d(K + A + 2 + CH, 4 * CH, 3, padding=1)
        self.mdn = nn.Linear(CH + K, 3 * MIX * K)
        self.outcome, self.shaping = nn.Linear(CH * S * S, 4), nn.Linear(CH * S * S, 1)
        o = torch.tensor(OFFSETS / OFFSETS[0], dtype=torch.float32)
        self.register_buffer("coords", torch.stack(torch.meshgrid(o, o, indexing="ij")))

    def step(self, z, a, warp, h, c):
        """z (B, Z), a (B, A), warp (B, S², S²), h and c (B, CH, S, S)."""
        b = z.shape[0]
        zmap = z.reshape(b, S, S, K).permute(0, 3, 1, 2)
        x = torch.cat(
            [zmap, a[:, :, None, None].expand(b, A, S, S), self.coords.expand(b, 2, S, S), h], 1
        )
        g_a, g_i, g_f, g_o = self.gates(x).chunk(4, 1)
        c = torch.sigmoid(g_f) * c + torch.sigmoid(g_i) * torch.tanh(g_a)
        h = torch.sigmoid(g_o) * torch.tanh(c)
        wp = lambda m: (
            torch.bmm(warp, m.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(m.shape)
        )
        h, c = wp(h), wp(c)
        zw = torch.bmm(warp, z.reshape(b, S * S, K))  # (B, S², K)
        raw = self.mdn(torch.cat([h.flatten(2).transpose(1, 2), zw], 2))  # (B, S², 3 MIX K)
        raw = raw.reshape(b, S * S, 3, MIX, K).permute(0, 2, 3, 1, 4).reshape(b, 3, MIX, Z)
        raw = raw + torch.stack([torch.zeros_like(raw[:, 0]), zw.reshape(b, 1, Z).expand(b, MIX, Z),
                                 torch.zeros_like(raw[:, 0])], 1)  # fmt: skip
        flat = h.flatten(1)
        return raw, self.outcome(flat), self.shaping(flat), flat, h, c

    def loss(self, z, a, z_next, warps):
        b, t = z.shape[:2]
        h = c = torch.zeros(b, CH, S, S, device=z.device)
        nll = ce = 0.0
        for k in range(t):
            raw, logit, shaping, _, h, c = self.step(z[:, k], a[:, k], warps[:, k], h, c)
            nll = nll + mdn_nll(raw, z_next[:, k])
            ce = ce + F.cross_entropy(logit, torch.zeros(b, dtype=torch.long, device=z.device))
            ce = ce + ((torch.sigmoid(shaping) - 0.2) ** 2).mean()
        return (nll + ce) / t


class DenseM(nn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.lstm = nn.LSTM(Z + A, hidden, batch_first=True)
        self.cell = nn.LSTMCell(Z + A, hidden)
        self.cell.weight_ih, self.cell.weight_hh = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0
        self.cell.bias_ih, self.cell.bias_hh = self.lstm.bias_ih_l0, self.lstm.bias_hh_l0
        self.mdn = nn.Linear(hidden, 3 * MIX * Z)
        self.outcome, self.shaping = nn.Linear(hidden, 4), nn.Linear(hidden, 1)

    def loss(self, z, a, z_next, warps=None):
        b, t = z.shape[:2]
        hs, _ = self.lstm(torch.cat([z, a], 2))
        flat = hs.reshape(b * t, -1)
        raw = self.mdn(flat).reshape(b * t, 3, MIX, Z)
        raw = raw + torch.stack([torch.zeros_like(raw[:, 0]), z.reshape(b * t, 1, Z).expand(b * t, MIX, Z),
                                 torch.zeros_like(raw[:, 0])], 1)  # fmt: skip
        nll = mdn_nll(raw, z_next.reshape(b * t, Z))
        ce = F.cross_entropy(
            self.outcome(flat), torch.zeros(b * t, dtype=torch.long, device=z.device)
        )
        return nll + ce + ((torch.sigmoid(self.shaping(flat)) - 0.2) ** 2).mean()

    def step(self, z, a, warp, h, c):
        h, c = self.cell(torch.cat([z, a], 1), (h, c))
        raw = self.mdn(h).reshape(-1, 3, MIX, Z)
        raw = raw + torch.stack([torch.zeros_like(raw[:, 0]), z[:, None].expand(-1, MIX, Z),
                                 torch.zeros_like(raw[:, 0])], 1)  # fmt: skip
        return raw, self.outcome(h), self.shaping(h), h, h, c


def sample(raw, tau=1.0):
    logit, mu, logs = raw[:, 0], raw[:, 1], raw[:, 2].clamp(-7, 4)
    pick = torch.distributions.Categorical(logits=(logit / tau).transpose(1, 2)).sample()[:, None]
    m, s = mu.gather(1, pick)[:, 0], torch.exp(logs.gather(1, pick)[:, 0])
    return m + s * math.sqrt(tau) * torch.randn_like(m)


def bench(fn, n, warmup=2, repeats=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        if DEV.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if DEV.type == "cuda":
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) / n)
    return statistics.median(ts)


def train(model):
    rng = np.random.default_rng(0)
    b, t = 32, 100
    z = torch.tensor(rng.standard_normal((b, t, Z), dtype=np.float32), device=DEV)
    a_np = rng.uniform(-1, 1, (b, t, A)).astype(np.float32)
    a = torch.tensor(a_np, device=DEV)
    z_next = torch.tensor(rng.standard_normal((b, t, Z), dtype=np.float32), device=DEV)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        warps = torch.tensor(
            warp_matrix(a_np.reshape(b * t, A)).reshape(b, t, S * S, S * S), device=DEV
        )
        opt.zero_grad()
        model.loss(z, a, z_next, warps).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return b * t / bench(step, 3)


def dream(model, hidden_shape):
    rng = np.random.default_rng(0)
    n = 1024
    z = torch.tensor(rng.standard_normal((n, Z), dtype=np.float32), device=DEV)
    a_np = np.zeros((n, A), np.float32)
    state = {"z": z, "a": a_np, "h": torch.zeros(n, *hidden_shape, device=DEV)}
    state["c"] = state["h"].clone()
    hid = int(np.prod(hidden_shape))
    w = torch.tensor(rng.standard_normal((A, Z + hid), dtype=np.float32) * 0.05, device=DEV)

    @torch.no_grad()
    def step():
        warp = torch.tensor(warp_matrix(state["a"]), device=DEV)
        a = torch.tensor(state["a"], device=DEV)
        raw, _, _, flat, state["h"], state["c"] = model.step(
            state["z"], a, warp, state["h"], state["c"]
        )
        state["z"] = sample(raw)
        state["a"] = torch.tanh(torch.cat([state["z"], flat], 1) @ w.T).cpu().numpy()

    return n / bench(step, 5, 2)


WORKLOADS = {
    "map_rnn_train": lambda: train(MapM().to(DEV)),
    "map_dream_b1024": lambda: dream(MapM().to(DEV), (CH, S, S)),
    "rnn_train_agent": lambda: train(DenseM().to(DEV)),
    "dream_b1024_agent": lambda: dream(DenseM().to(DEV), (256,)),
}


def main(workloads, argv):
    """Runs the named workloads (all if none) on `--device` (default the CPU), one JSON
    line each; benchmarks/torch_pixel_mover.py's twins run through it too."""
    global DEV
    argv = list(argv)
    if "--device" in argv:
        i = argv.index("--device")
        DEV = torch.device(argv[i + 1])
        del argv[i : i + 2]
    torch.manual_seed(0)
    for name in argv or list(workloads):
        print(
            json.dumps(
                {"name": name, "per_sec": workloads[name](), "fw": "torch", "device": DEV.type}
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(WORKLOADS, sys.argv[1:])
