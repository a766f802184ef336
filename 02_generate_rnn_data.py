"""Generates random episodes of SocNavEnv whose steps train the MDN-RNN (M).

Rollouts made as 01 makes them, in their own folder and seed stream, for M: each file is
one whole episode, so M learns from frames, actions, rewards and endings in order.

With --agent, a trained C plays instead of --policy (through the V and M it was trained
with, its actions with Gaussian noise): the paper's iterative procedure, whose episodes
of the current C go back into M's training (04 --extra-episodes).

Reads: nothing; with --agent, <agent-dir>/models/{<agent>,vae,rnn_<mode>}.npz (+ json).
Writes: data/rnn_data/{train,test}/NNNNNN.npz and data/rnn_data/manifest.json, in the
format 01_generate_vae_data.py describes (--labels: what that policy would do at each
step). As with 01, the files do not depend on --workers and a re-run writes only the
missing ones.
"""

import lib  # noqa: F401  (first: lib/kernels/runtime.py's thread settings must precede NumPy)

# isort: split
import functools
import os

from lib import cli
from lib.data import datagen
from lib.fileio import file_hash

SCRIPT = "02_generate_rnn_data.py"


def add_agent_args(p):
    p.add_argument(
        "--agent",
        metavar="NAME",
        default=None,
        help="play the controller <agent-dir>/models/NAME.npz (07's --name, e.g. "
        "controller_dream) through the V and M it was trained with, instead of --policy: "
        "the paper's iterative procedure collects the current C's episodes for M",
    )
    p.add_argument(
        "--agent-dir",
        metavar="DIR",
        default=None,
        help="the folder whose models/ hold --agent's C, V and M (when not given: --data-dir)",
    )
    p.add_argument(
        "--agent-noise",
        type=cli.non_negative_float,
        default=0.1,
        help="standard deviation of the Gaussian noise on each of --agent's actions "
        "(clipped to [-1, 1]), so its episodes explore around what it does",
    )


def parse_args(argv=None):
    return datagen.parse_args(
        argv, __doc__, "episodes", ("--episodes", "--testepisodes"), "04 --task-weight",
        add_agent_args,
    )  # fmt: skip


def agent_play(args):
    """The --agent's `datagen.AgentPlay`, its files checked (one line if they are not
    there, do not fit together, or saw frames drawn otherwise); None without --agent."""
    if args.agent is None:
        if args.agent_dir is not None:
            cli.fail("--agent-dir names where --agent's models are: add --agent NAME")
        return None
    from lib.control.agent import exploring_agent  # Chainer and the models: only here
    from lib.models import saved_models

    agent_dir = args.agent_dir or args.data_dir
    try:
        _, c_sidecar, _, v_sidecar, _, _ = saved_models.load_agent(agent_dir, args.agent)
    except saved_models.CheckpointError as e:
        cli.fail(str(e))
    seen = saved_models.observation_settings(v_sidecar)
    if seen != {"image_size": 64, "view_size": args.view_size}:
        cli.fail(
            f"--agent's V saw {seen['image_size']}-pixel frames of {seen['view_size']} m, these "
            f"would be 64 pixels of {args.view_size} m: pass --view-size {seen['view_size']}"
        )
    models = os.path.join(agent_dir, "models")
    files = [f"{args.agent}.npz", "vae.npz", f"rnn_{c_sidecar['rnn_mode']}.npz"]
    identity = {f: file_hash(os.path.join(models, f)) for f in files}
    identity["noise"] = args.agent_noise
    factory = functools.partial(exploring_agent, agent_dir, args.agent, args.agent_noise)
    return datagen.AgentPlay(f"agent:{args.agent}", identity, factory)


def main(argv=None):
    args = parse_args(argv)
    root = os.path.join(args.data_dir, "rnn_data")
    datagen.generate(
        root, {"train": args.episodes, "test": args.testepisodes}, args, "rnn", SCRIPT,
        "episodes", agent_play(args),
    )  # fmt: skip


if __name__ == "__main__":
    main()
