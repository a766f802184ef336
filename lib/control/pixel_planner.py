"""Model-predictive control in the pixel dream: plan a short future at every real step.

Beyond the paper. `lib.control.dream_planner` imagines its candidate action sequences in
M's own dream, which forgets the people within a few steps. This planner imagines them
in the pixel dream instead (`lib.control.pixel_dream`): at every real step, the mover
moves the agent's real frame t (its velocity field read from the real frames t - 1 and
t, once per step and agent) by each candidate's actions, V reads each dreamed frame, and
M's heads score it. The search is `dream_planner.plan`'s (candidate 0 is C's own
closed-loop rollout, the others add offsets; CEM; a margin C's score must be beaten by;
the same `PlanSettings`, whose `tau` is unused: nothing is sampled). With K = 1, or when
no candidate beats C, the action is C's, bit for bit.

The horizon should not exceed the mover's training horizon (04b's --horizon, 8): each
imagined frame is frame t moved once, never re-anchored. An episode's first step has no
frame t - 1: the mover sees no motion there.
"""

from __future__ import annotations

import chainer
import numpy as np

from lib.control.dream_planner import PlannerAgent, _rollouts
from lib.devices import to_host
from lib.models.pixel_mover import to_frames, to_planes

HORIZON = 8  # imagined steps: 04b's default --horizon, what the mover was trained to dream


class PixelPlannerAgent(PlannerAgent):
    """The World Models agent with its action planned in the pixel dream (see the
    module's text): `PlannerAgent` with the pixel dream's rollouts. It also keeps each
    slot's last real frame and action, for the mover's frame t - 1.

    Args:
        n: lockstep slots; vae, rnn, params, settings, temperature, encoder: as
            `PlannerAgent`.
        mover: a trained `PixelMover` (04b) for V's frame size.
    """

    name = "world_models_pixel_planner"

    def __init__(
        self, n, vae, rnn, params, mover, settings=None, temperature=0.0, encoder=None
    ):  # fmt: skip
        super().__init__(n, vae, rnn, params, settings, temperature=temperature, encoder=encoder)
        self.mover = mover
        s = mover.image_size
        self.last_frame = np.zeros((n, s, s, 3), np.uint8)
        self.last_action = np.zeros((n, 2), np.float32)
        self.has_last = np.zeros(n, bool)
        self._images = None

    def reset(self, slots, seeds, episodes=None):
        super().reset(slots, seeds, episodes)
        self.has_last[np.asarray(slots)] = False

    def act(self, sim, images=None):
        self._images = images
        actions = super().act(sim, images)
        live = np.flatnonzero(sim.active) if sim is not None else np.arange(len(images))
        self.last_frame[live] = images[live]
        self.last_action[live] = actions[live]
        self.has_last[live] = True
        return actions

    def rollouts(self, live):
        """`dream_planner.plan`'s rollouts for the agents `live`: `_rollouts` with each
        next z read from the mover's frames. The field and what every render shares
        (`PixelMover.prepare`) are computed once, for all candidates and iterations."""
        k = self.settings.candidates
        cur = to_planes(self._images[live])
        first = ~self.has_last[live]
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            aligned = self.mover.align_previous(
                to_planes(self.last_frame[live]), self.last_action[live]
            )
            aligned = np.where(first[:, None, None, None], cur, aligned)
            u = np.repeat(self.mover.field(cur, aligned).array, k, axis=0)
            cur = np.repeat(cur, k, axis=0)
            prepared = self.mover.prepare(u, cur)

        def rollouts(*args):
            return _rollouts(*args, next_z=frames_ahead(self.mover, self.encoder, u, cur, prepared))

        return rollouts


def frames_ahead(mover, encoder, u, cur, prepared):
    """A `dream_planner._rollouts` next_z for one set of candidates: called with each
    step's actions (N, A), it returns V's z (N, Z) of frame t moved by the actions so
    far (u (N, C, S, S) and cur (N, 3, S, S): each candidate's agent's velocity field
    and real frame t, host float32; prepared: `mover.prepare(u, cur)`)."""
    taken = []

    def next_z(a):
        taken.append(to_host(a).astype(np.float32))
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            frame = mover.render(u, cur, np.stack(taken, axis=1), prepared)[0].array
        return encoder(to_frames(frame))[0]

    return next_z
