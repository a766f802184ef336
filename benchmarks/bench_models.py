"""Times the models at paper sizes on random inputs; one JSON line per workload.

Usage: `python benchmarks/bench_models.py [--gpu N] [NAME ...]` (all workloads if
none; on a GPU, the ones `torch_ref.py --device cuda` measures, plus `dream_b1024`).
Each line is `{"name": ..., "per_sec": ...}` plus context fields, with the same
names and units as `../shared/reference/torch_ref.py`, so the two can be run
side by side:

- `vae_train`: frames/s, batch 100, forward + backward + Adam(1e-4); the uint8
  batch starts on the host, as in training.
- `vae_train_b1000`: the same at batch 1000 (a GPU's batch, not the paper's).
- `vae_encode`: frames/s, batch 1000, `no_backprop_mode` and `train=False`.
- `rnn_train`: sequence-steps/s, batch 100 x 100 steps, z 32, 2-D actions, 5
  mixtures, hidden 256, forward + backward + Adam(1e-3) + gradient clip 1.0.
- `ctrl_b1`, `ctrl_b64`: agent-steps/s of one real-env control step (V encode
  of a uint8 64x64 frame, one M step, one C product) for 1 and 64 agents.
- `plan_step`: real env-steps/s of the planning agent (`lib.control.dream_planner`) at its
  default K, H and CEM iterations, 64 agents in lockstep: V encode, a plan of
  64 x K rollouts of H steps through M (with reward and done heads), one M step.
- `plan_lookahead`: real env-steps/s of the look-ahead planner (`lib.control.lookahead_planner`,
  the default of `08 --planner`) at `make agent`'s sizes (V's spatial z 6 x 6 x 8, h 256),
  64 agents in lockstep: V encode, C, the head's risk of C's action and a 9 x 9 grid,
  one M step.
- `ctrl_b64_agent`: `ctrl_b64` at the same sizes, the linear agent beside it.
- `dream_b1024`: agent-steps/s, 1024 agents: one M step with reward and done
  heads, sampling at tau 1, and a linear controller `tanh(W [z, h] + b)`.
- `rnn_train_agent`, `map_rnn_train`: sequence-steps/s of training `make agent`'s M,
  z 6 x 6 x 8 with the outcome head, batch 32 x 100 steps: the dense MDN-LSTM (h 256,
  04 --arch lstm) and the map M (16 channels a cell, 04 --arch map).
- `dream_b1024_agent`, `map_dream_b1024`: `dream_b1024` with those two Ms.
- `mover_train`: start frames/s of training the pixel mover (lib/models/pixel_mover.py)
  at 04b's defaults: batch 16, 8 steps dreamed and scored, 24 channels, 64 x 64 frames;
  forward + backward + Adam(1e-3).
- `mover_dream_b256`: dreamed frames/s, 256 start frames: the velocity field once, then
  10 steps, each one bilinear sample of the start frame.

Workloads live in `WORKLOADS` (name -> function returning a rate; the variants of one
workload are `partial`s of it); add new ones there. Timing: warm up, then the median of a few timed rounds of several
iterations each; on a GPU each round ends by synchronising the device. The
machine is shared: run under `flock /tmp/bench.lock`.

Reads: nothing. Writes: nothing (stdout only).
"""

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import chainer
import numpy as np

from lib import devices
from lib.control.agent import WorldModelsAgent
from lib.control.dream_planner import PlannerAgent, PlanSettings
from lib.control.lookahead_planner import LookaheadPlanner
from lib.kernels.fast_adam import FastAdam
from lib.models.controller import n_params
from lib.models.lookahead_heads import MEMBERS, make_head, pixel_size
from lib.models.map_rnn import MapRNN
from lib.models.mdn_rnn import MDNRNN, MDNRNNLoss, sample
from lib.models.pixel_mover import PixelMover
from lib.models.vae import ConvVAE, VAELoss

# Where the workloads run: set by `main` from --gpu (the CPU by default).
RUN = {"device": chainer.get_device("@numpy"), "forever": False}
GPU_DEFAULT = ("vae_train", "vae_train_b1000", "vae_encode", "rnn_train", "dream_b1024")


def _sync():
    """Waits for the device's queued work (a no-op on the CPU)."""
    if not devices.on_cpu(RUN["device"]):
        import cupy  # here: optional, only on the GPU

        cupy.cuda.get_current_stream().synchronize()


def _on_device(link):
    return link.to_device(RUN["device"])


def _send(x):
    return RUN["device"].send(x)


def bench(fn, n, warmup=2, repeats=3):
    """Median seconds per call of `fn` over `repeats` rounds of `n` calls. With
    `--forever`, rounds never end: each prints its seconds per call as a JSON line
    (`{"sec_per_call": ...}`), a steady load for bench_contention.py."""
    for _ in range(warmup):
        fn()
    _sync()
    while RUN["forever"]:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        _sync()
        print(json.dumps({"sec_per_call": (time.perf_counter() - start) / n}), flush=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        _sync()
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def _frames(rng, n):
    """(n, 64, 64, 3) uint8 random frames, the VAE's input format."""
    return rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def _vae_train(batch):
    """Frames/s of VAE training steps at `batch`, Adam(1e-4); frames start on the host."""
    rng = np.random.default_rng(0)
    vae = _on_device(ConvVAE())
    loss = VAELoss(vae, kl_tolerance=0.5, rng=rng)
    optimizer = FastAdam(alpha=1e-4)
    optimizer.setup(vae)
    x = _frames(rng, batch)

    def step():
        optimizer.update(loss, x)

    on_gpu = not devices.on_cpu(RUN["device"])
    return batch / bench(step, 20 if on_gpu else max(1, 500 // batch))


def vae_encode():
    """Frames/s of VAE encoding, batch 1000, no graph."""
    rng = np.random.default_rng(0)
    vae = _on_device(ConvVAE())
    x = _send(_frames(rng, 1000))

    def step():
        with chainer.using_config("train", False), chainer.no_backprop_mode():
            vae.encode(x)

    return 1000 / bench(step, 2 if devices.on_cpu(RUN["device"]) else 20, 1)


def rnn_train():
    """Sequence-steps/s of M training, batch 100 x 100 steps, Adam(1e-3), clip 1."""
    rng = np.random.default_rng(0)
    model = _on_device(MDNRNN())
    loss = MDNRNNLoss(model)
    optimizer = FastAdam(alpha=1e-3)
    optimizer.setup(model)
    optimizer.add_hook(chainer.optimizer_hooks.GradientClipping(1.0))
    z = _send(rng.standard_normal((100, 100, 32), dtype=np.float32))
    a = _send(rng.uniform(-1, 1, (100, 100, 2)).astype(np.float32))
    z_next = _send(rng.standard_normal((100, 100, 32), dtype=np.float32))

    def step():
        model.cleargrads()
        value, _ = loss(z, a, z_next)
        value.backward()
        optimizer.update()

    return 100 * 100 / bench(step, 5 if devices.on_cpu(RUN["device"]) else 20)


def _dream_rate(model, z_size, weight_scale, n, warmup):
    """Agent-steps/s of 1,024 agents dreaming in `model`: one M step with its heads,
    sampling at tau 1, and a linear controller `tanh(W [z, h] + b)`."""
    rng = np.random.default_rng(0)
    agents = 1024
    xp = model.xp
    w = rng.standard_normal((2, z_size + model.hidden_size), dtype=np.float32)
    w = _send(w * np.float32(weight_scale))
    b = _send(np.zeros(2, np.float32))
    carry = {
        "z": _send(rng.standard_normal((agents, z_size), dtype=np.float32)),
        "a": _send(np.zeros((agents, 2), np.float32)),
        "state": model.initial_state(agents),
    }

    def step():
        out = model.step(carry["z"], carry["a"], carry["state"])
        carry["z"] = sample(out.mixture, 1.0, rng)
        carry["state"] = out.state
        carry["a"] = xp.tanh(xp.concatenate([carry["z"], out.h], axis=1) @ w.T + b)

    return agents / bench(step, n, warmup)


def dream_b1024():
    """Agent-steps/s of dreaming: M step + heads + sampling + linear controller."""
    return _dream_rate(_on_device(MDNRNN(reward_head=True, done_head=True)), 32, 0.1, 20, 3)


def _agent_m(arch):
    """`make agent`'s M on random weights: z 6 x 6 x 8 = 288 with the outcome head; the
    dense MDN-LSTM (h 256) or the map M (16 channels a cell, h 576; its mixture head per
    cell, 1 x 1, as benchmarks/torch_map_rnn.py's twin, where `make agent` reads 3 x 3)."""
    if arch == "map":
        offsets = ConvVAE(z_size=288, spatial=8, enc_channels=[32, 64, 128]).map_offsets(8.0)
        return MapRNN(z_size=288, side=6, offsets=offsets, channels=16, outcome_head=True)
    return MDNRNN(z_size=288, hidden_size=256, residual=True, outcome_head=True)


def _m_train(arch):
    """Sequence-steps/s of training `make agent`'s M (`_agent_m`): batch 32 x 100 steps
    (04's --batch-size and --seq-len there), forward + backward + Adam(1e-3) + clip 1."""
    rng = np.random.default_rng(0)
    model = _on_device(_agent_m(arch))
    loss = MDNRNNLoss(model)
    optimizer = FastAdam(alpha=1e-3)
    optimizer.setup(model)
    optimizer.add_hook(chainer.optimizer_hooks.GradientClipping(1.0))
    b, t = 32, 100
    z = _send(rng.standard_normal((b, t, 288), dtype=np.float32))
    a = _send(rng.uniform(-1, 1, (b, t, 2)).astype(np.float32))
    z_next = _send(rng.standard_normal((b, t, 288), dtype=np.float32))
    reward = _send(np.full((b, t), -0.004, np.float32))
    outcome = _send(np.zeros((b, t), np.int8))

    def step():
        model.cleargrads()
        value, _ = loss(z, a, z_next, None, reward, None, None, outcome)
        value.backward()
        optimizer.update()

    return b * t / bench(step, 3 if devices.on_cpu(RUN["device"]) else 10)


def _m_dream(arch):
    """Agent-steps/s of dreaming in `make agent`'s M (`_agent_m`), 1024 agents: one M
    step with the outcome head, sampling at tau 1, and a linear controller."""
    return _dream_rate(_on_device(_agent_m(arch)), 288, 0.05, 5, 2)


def _ctrl(n_agents):
    """Agent-steps/s of one real-env control step for `n_agents` in lockstep:
    V encode of uint8 64x64 frames, one M step, one batched C product."""
    rng = np.random.default_rng(0)
    vae = _on_device(ConvVAE())
    rnn = _on_device(MDNRNN())
    params = rng.normal(0, 0.1, (1, n_params(32, 256))).astype(np.float32)
    agent = WorldModelsAgent(n_agents, vae, rnn, params)
    frames = _frames(rng, n_agents)
    iters = max(4, 256 // n_agents)
    return n_agents / bench(lambda: agent.act(None, frames), iters)


def plan_step():
    """Env-steps/s of the planning agent at its defaults, 64 agents in lockstep."""
    rng = np.random.default_rng(0)
    agents = 64
    vae = _on_device(ConvVAE())
    rnn = _on_device(MDNRNN(reward_head=True, done_head=True, residual=True))
    params = rng.normal(0, 0.1, (1, n_params(32, 256))).astype(np.float32)
    agent = PlannerAgent(agents, vae, rnn, params, PlanSettings())
    frames = _frames(rng, agents)
    return agents / bench(lambda: agent.act(None, frames), 2, 1, 3)


def _agent_models(rng):
    """V (spatial 8: z 288), M (h 256) and C's params at `make agent`'s sizes."""
    vae = _on_device(ConvVAE(z_size=288, enc_channels=(32, 64, 128), dec_channels=(128, 64, 32),
                             dec_kernels=(5, 5, 6, 6), spatial=8, task_size=2))  # fmt: skip
    rnn = _on_device(MDNRNN(z_size=vae.z_size))
    params = rng.normal(0, 0.1, (1, n_params(vae.z_size, 256))).astype(np.float32)
    return vae, rnn, params


def plan_lookahead():
    """Env-steps/s of the look-ahead planner at its defaults (07b_train_lookahead.py's
    ensemble of MEMBERS heads, reading the frames' centre through their conv trunks), 64
    agents in lockstep."""
    rng = np.random.default_rng(0)
    vae, rnn, params = _agent_models(rng)
    pixels = pixel_size(vae.image_size)
    head = _on_device(
        make_head(MEMBERS, z_size=vae.z_size, hidden_size=256, pixels=pixels, trunk="conv")
    )
    for member in head:
        member.out.b.array[...] = 0.0  # C's action is risky often enough that the choice runs
    agent = LookaheadPlanner(64, vae, rnn, params, head)
    frames = _frames(rng, 64)
    return 64 / bench(lambda: agent.act(None, frames), 8)


def ctrl_b64_agent():
    """`ctrl_b64` at `make agent`'s sizes."""
    rng = np.random.default_rng(0)
    vae, rnn, params = _agent_models(rng)
    agent = WorldModelsAgent(64, vae, rnn, params)
    frames = _frames(rng, 64)
    return 64 / bench(lambda: agent.act(None, frames), 8)


def _mover_inputs(rng, n, k):
    """Start frames, aligned previous frames (float planes), and k actions each."""
    cur = rng.uniform(0, 1, (n, 3, 64, 64)).astype(np.float32)
    prev = rng.uniform(0, 1, (n, 3, 64, 64)).astype(np.float32)
    return cur, prev, rng.uniform(-1, 1, (n, k, 2))


def mover_train():
    """Start frames/s of the mover's training step at 04b's defaults."""
    rng = np.random.default_rng(0)
    mover = _on_device(PixelMover())
    optimizer = chainer.optimizers.Adam(alpha=1e-3)
    optimizer.setup(mover)
    cur, prev, acts = _mover_inputs(rng, 16, 8)
    targets = rng.uniform(0, 1, (16, 8, 3, 64, 64)).astype(np.float32)

    def step():
        loss = mover.loss(cur, prev, acts, targets)
        mover.cleargrads()
        loss.backward()
        optimizer.update()

    return 16 / bench(step, 3)


def mover_dream_b256():
    """Dreamed frames/s: 256 starts, the field once, then 10 rendered steps."""
    rng = np.random.default_rng(0)
    mover = _on_device(PixelMover())
    cur, prev, acts = _mover_inputs(rng, 256, 10)

    def dream():
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            u = mover.field(cur, prev)
            for k in range(1, 11):
                mover.render(u, cur, acts[:, :k])

    return 256 * 10 / bench(dream, 1, 1, 3)


WORKLOADS = {
    "vae_train": partial(_vae_train, 100),
    "vae_train_b1000": partial(_vae_train, 1000),
    "vae_encode": vae_encode,
    "rnn_train": rnn_train,
    "dream_b1024": dream_b1024,
    "ctrl_b1": partial(_ctrl, 1),
    "ctrl_b64": partial(_ctrl, 64),
    "plan_step": plan_step,
    "plan_lookahead": plan_lookahead,
    "ctrl_b64_agent": ctrl_b64_agent,
    "rnn_train_agent": partial(_m_train, "lstm"),
    "map_rnn_train": partial(_m_train, "map"),
    "dream_b1024_agent": partial(_m_dream, "lstm"),
    "map_dream_b1024": partial(_m_dream, "map"),
    "mover_train": mover_train,
    "mover_dream_b256": mover_dream_b256,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Time the models at paper sizes; print one JSON line per workload.",
        epilog="Run under `flock /tmp/bench.lock` on a shared machine.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"workloads to run: {', '.join(WORKLOADS)} (default: all but vae_train_b1000 "
        f"on the CPU; {', '.join(GPU_DEFAULT)} on a GPU)",
    )
    parser.add_argument(
        "--gpu",
        type=int,
        default=-1,
        help="CUDA GPU id to run the workloads on (needs CuPy); -1 (default) the CPU",
    )
    parser.add_argument(
        "--chainer-conv",
        action="store_true",
        help="use Chainer's own convolution on the CPU instead of lib.kernels.fastconv (for comparison)",
    )
    parser.add_argument(
        "--forever",
        action="store_true",
        help="repeat the first workload until killed, printing each round's seconds per "
        "call (the second job of bench_contention.py)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    on_gpu = args.gpu >= 0
    default = GPU_DEFAULT if on_gpu else [n for n in WORKLOADS if n != "vae_train_b1000"]
    names = args.names or list(default)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(
            f"bench_models.py: error: unknown workload {unknown[0]!r}; known: {', '.join(WORKLOADS)}",
            file=sys.stderr,
        )
        sys.exit(2)
    try:
        RUN["device"] = devices.select_device(args.gpu)
    except devices.DeviceUnavailable as e:
        print(f"bench_models.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    RUN["device"].use()
    RUN["forever"] = args.forever
    context = {"fw": "chainer", "device": "cpu" if not on_gpu else f"cuda:{args.gpu}"}
    if not on_gpu:  # which convolution runs matters only on the CPU, and only for V
        context["conv"] = "chainer" if args.chainer_conv else "fastconv"
    for name in names:
        with chainer.using_config("fastconv", not args.chainer_conv):
            rate = WORKLOADS[name]()
        print(json.dumps({"name": name, "per_sec": rate, **context}), flush=True)


if __name__ == "__main__":
    main()
