"""M over V's latent map: a convolutional MDN-LSTM that moves with the robot.

Beyond the paper. With a spatial V (`ConvVAE(spatial=K)`), z is a S x S map of K
latents per cell, each cell a patch of the egocentric view. `MapRNN` keeps its LSTM
state as a map of the same grid and predicts the next map cell by cell:

1. The gates are one 3 x 3 convolution of [z_t map, a_t, the cells' coordinates, the
   state map h] (a convolutional LSTM: each cell sees its neighbours, so what a
   person does near one cell is learnt once for every cell). Maps are NHWC, which is
   z's own order (cell-major, the K latents of a cell innermost), so z needs no
   transpose, and the convolution is the project's NHWC kernel
   (`lib.kernels.fastconv`) on a zero-padded map.
2. The new (h, c) maps are warped by the action's ego-motion (`lib.models.ego_warp`):
   the robot's own turn and advance move the whole view by a rotation and a shift
   that the action fixes, so the state follows the room instead of relearning
   geometry. The state the next step reads is in the next frame's coordinates.
3. The mixture head (per cell, linear in [warped h, warped z_t]) predicts z_{t+1}
   per cell as the warped z_t plus a mixture of offsets: what does not move in the
   room is predicted by the warp alone; capacity goes to the people.
   With `transport=True` the mean's base is not the warped z itself but the warped
   z carried to each cell from its 3 x 3 neighbours, by weights (a softmax over the
   nine) that the same head predicts from [h, warped z]: a person that the state knows
   to be walking left is moved one cell's share to the left each step, in the latents
   themselves (dynamic neural advection, Finn et al. 2016, over V's latent map). The
   head alone is linear in [h, z]: the share of a neighbour's latents it takes cannot
   depend on h (on where the state knows a person to be going); the transport's
   weights are that product.
   With `velocity=True` each cell's last change rides along: the state also holds
   z_t warped into the next frame, so the next step knows each cell's velocity v_t =
   z_t - warp(z_{t-1}) (in frame t; 0 at an episode's first step). v_t joins the gates'
   input, and the mean's base moves on by a learnt share g of it per latent (g starts at
   0, today's M): base = warp(z_t) + g * warp(v_t), a constant-velocity prior that the
   offsets correct.
4. The outcome head (how the step ends) and the running reward read the whole
   warped h map, flattened: linearly, or (`outcome_hidden=N`) the outcome through a
   3 x 3 convolution of N ReLU channels over the map first (`MapOutcomeHead`), so that
   "a person in this cell, coming this way" is one feature learnt for every cell.

h, what C and the planners read, is the flattened warped h map (hidden_size =
channels * S²). The interface is `MDNRNN`'s: `forward`, `step`, `initial_state`,
`sample`, `scheduled_inputs`, `open_loop_inputs`, `config`, and `MDNRNNLoss` trains it unchanged; the
mixture head's raw output uses the same `(3, K, Z)` layout with z's own order.

Typical use::

    m = MapRNN(z_size=288, side=6, offsets=ego_warp.grid_offsets(...), outcome_head=True)
    loss, state = MDNRNNLoss(m)(z, a, z_next, mask, reward, None, None, outcome)
"""

from __future__ import annotations

import inspect

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

from lib import validate
from lib.kernels import sparse_warp
from lib.kernels.fastconv import ConvolutionNHWC
from lib.kernels.map_lstm import cell_step, map_lstm
from lib.models import ego_warp
from lib.models.mdn_rnn import (
    MDNRNN,
    OUTCOME_CLASSES,
    SequenceOutput,
    StepOutput,
    checked_heads,
    step_inputs,
)

ARCHS = ("lstm", "map")  # 04 --arch: the paper's dense MDN-LSTM, or this one
TRANSPORT_TAPS = 9  # a cell's 3 x 3 neighbourhood, row-major: the centre is tap 4
TRANSPORT_CENTRE_BIAS = 5.0  # e^5 / (e^5 + 8): the untrained transport keeps 95 % in place


class MapRNN(chainer.Chain):
    """Convolutional MDN-LSTM over a S x S latent map, warped by the robot's motion.

    Args:
        z_size: int, S * S * K (V's spatial z).
        side: int, S.
        offsets: S floats, the ego coordinate (m) of each row / column of V's map
            (`ego_warp.grid_offsets` of V's cell centres).
        action_size: int, 2.
        channels: int, state channels per cell (hidden_size = channels * S²).
        n_mixtures: int, Gaussians per latent.
        kernel: int, odd size of the gates' convolution.
        outcome_head: bool, predict how each step ends and its running reward
            (`MDNRNN`'s outcome head; the dream needs it).
        head_kernel: odd size of the mixture head's view: 1 reads each cell's [h, warped
            z] alone; 3 a convolution over its 3 x 3 neighbourhood, so the head can undo
            the blur that the warp's bilinear interpolation leaves in the latents.
        outcome_hidden: int, 0 for a linear outcome head over the flattened h map, or
            the channels of `MapOutcomeHead`'s convolution.
        transport: bool, carry the warped z to each cell from its 3 x 3 neighbours by
            predicted weights before adding the offsets (see the module's text).
        velocity: bool, the constant-velocity prior (see the module's text): c then
            holds [the LSTM's cells, z_t warped to the next frame, 1 once it is known],
            state_size = hidden_size + z_size + 1 floats.
        shaping_bound, outcome_weights, log_sigma_min, log_sigma_max: as `MDNRNN`.

    Raises:
        ValueError: z_size not a multiple of side², offsets of another length,
            non-positive sizes, an even kernel.
    """

    arch = "map"
    reward_head = done_head = False
    residual = True  # the means are offsets from the warped z
    task_size = 0

    def __init__(
        self,
        z_size=288,
        side=6,
        offsets=None,
        action_size=2,
        channels=16,
        n_mixtures=5,
        kernel=3,
        outcome_head=False,
        head_kernel=1,
        transport=False,
        outcome_hidden=0,
        velocity=False,
        shaping_bound=0.02,
        outcome_weights=None,
        log_sigma_min=-7.0,
        log_sigma_max=4.0,
    ):
        super().__init__()
        side, channels, n_mixtures, action_size, kernel = validate.counts(
            side=side,
            channels=channels,
            n_mixtures=n_mixtures,
            action_size=action_size,
            kernel=kernel,
        )
        if side < 2 or int(z_size) % (side * side):
            raise ValueError(f"z_size {z_size} is not a {side}x{side} map of latents")
        if int(kernel) % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        if int(head_kernel) < 1 or int(head_kernel) % 2 == 0:
            raise ValueError(f"head_kernel must be odd and positive, got {head_kernel}")
        self.head_kernel = int(head_kernel)
        offsets = ego_warp.grid_offsets(side, 8.0) if offsets is None else offsets
        if len(offsets) != side:
            raise ValueError(f"offsets must hold {side} floats, got {len(offsets)}")
        if not log_sigma_min < log_sigma_max:
            raise ValueError(f"empty log-sigma range [{log_sigma_min}, {log_sigma_max}]")
        self.z_size, self.side = int(z_size), side
        self.latents = self.z_size // (side * side)  # K per cell
        self.offsets = [float(o) for o in offsets]
        self.action_size = int(action_size)
        self.channels = int(channels)
        self.hidden_size = self.channels * side * side
        self.n_mixtures = int(n_mixtures)
        self.kernel = int(kernel)
        self.log_sigma_min, self.log_sigma_max = float(log_sigma_min), float(log_sigma_max)
        self.outcome_head = bool(outcome_head)
        self.transport = bool(transport)
        self.velocity = bool(velocity)
        # c's width: the LSTM's cells, and with velocity the warped last z and its flag
        self.state_size = self.hidden_size + (self.z_size + 1 if self.velocity else 0)
        self.outcome_hidden = (
            validate.counts(outcome_hidden=outcome_hidden)[0] if outcome_hidden else 0
        )
        if self.outcome_hidden and not self.outcome_head:
            raise ValueError("outcome_hidden shapes the outcome head: needs outcome_head=True")
        self.shaping_bound, self.outcome_weights = checked_heads(shaping_bound, outcome_weights)
        # The cells' coordinates, in units of the view's half side: where the robot is.
        o = np.asarray(self.offsets, np.float32) / max(abs(self.offsets[0]), 1e-6)
        self._coords = np.stack(np.meshgrid(o, o, indexing="ij"), axis=-1)  # (S, S, 2)
        k, ch = self.kernel, self.channels
        n_in = self.latents * (2 if self.velocity else 1) + self.action_size + 2 + ch
        with self.init_scope():
            # The gates from [z map, a, coords, h], NHWC ("same" padding added by hand).
            self.gates = ConvolutionNHWC(n_in, 4 * ch, k, stride=1, activation=None)
            n_out = 3 * self.n_mixtures * self.latents + (TRANSPORT_TAPS if self.transport else 0)
            if self.head_kernel == 1:
                self.mdn = L.Linear(ch + self.latents, n_out)
            else:
                self.mdn = ConvolutionNHWC(
                    ch + self.latents, n_out, self.head_kernel, stride=1, activation=None
                )
            if self.outcome_hidden:
                self.outcome = MapOutcomeHead(side, ch, self.outcome_hidden)
            elif self.outcome_head:
                self.outcome = L.Linear(self.hidden_size, len(OUTCOME_CLASSES))
            if self.outcome_head:
                self.shaping = L.Linear(self.hidden_size, 1)
            if self.velocity:  # the share of each latent's last change carried on: 0 first
                self.velocity_gain = chainer.Parameter(np.zeros(self.latents, np.float32))
        self.gates.b.array[2 * ch : 3 * ch] = 1.0  # forget gate, as MDNRNN's (a, i, f, o)
        if self.transport:  # start near the identity (the bias starts at 0): 95 % stays
            self.mdn.b.array[-TRANSPORT_TAPS + TRANSPORT_TAPS // 2] = TRANSPORT_CENTRE_BIAS

    # Borrowed from MDNRNN: they only read the sizes and heads named above.
    can_dream = MDNRNN.can_dream
    outcome_values = MDNRNN.outcome_values
    split = MDNRNN.split
    scheduled_inputs = MDNRNN.scheduled_inputs
    open_loop_inputs = MDNRNN.open_loop_inputs
    heads = MDNRNN.heads
    sample = MDNRNN.sample

    def _outcome_logits(self, h):
        """The outcome head's (B, 4) logits of (B, H) states, no graph (through
        `MapOutcomeHead` when the M has one)."""
        if not self.outcome_hidden:
            return MDNRNN._outcome_logits(self, h)
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            return self.outcome(h).array

    def config(self):
        """The constructor's arguments, JSON-ready (with "arch": "map")."""
        return {
            "arch": self.arch,
            "z_size": self.z_size,
            "side": self.side,
            "offsets": self.offsets,
            "action_size": self.action_size,
            "channels": self.channels,
            "n_mixtures": self.n_mixtures,
            "kernel": self.kernel,
            "outcome_head": self.outcome_head,
            "head_kernel": self.head_kernel,
            "transport": self.transport,
            "outcome_hidden": self.outcome_hidden,
            "velocity": self.velocity,
            "shaping_bound": self.shaping_bound,
            "outcome_weights": self.outcome_weights,
            "log_sigma_min": self.log_sigma_min,
            "log_sigma_max": self.log_sigma_max,
        }

    def initial_state(self, batch):
        """Zero state for `batch` agents: (h, c), float32 arrays (B, hidden_size) and
        (B, state_size) (with velocity, no last z known yet)."""
        xp = self.xp
        return (xp.zeros((batch, self.hidden_size), np.float32),
                xp.zeros((batch, self.state_size), np.float32))  # fmt: skip

    def _split_c(self, c):
        """(cells, last z warped, known): c's parts, (N, hidden), (N, Z), (N, 1)."""
        hid, z, xp = self.hidden_size, self.z_size, self.xp
        return tuple(
            xp.ascontiguousarray(p) for p in (c[:, :hid], c[:, hid : hid + z], c[:, hid + z :])
        )

    def _join_c(self, cells, z_warped):
        """c with velocity: [the LSTM's cells, the warped z, 1 (known)] along the last
        axis (`_split_c`'s inverse), for one step (N, .) or a sequence (B, T, .)."""
        xp = self.xp
        known = xp.ones((*z_warped.shape[:-1], 1), np.float32)
        return xp.concatenate([cells, z_warped, known], axis=-1)

    def _velocity_gain(self, n):
        """The gain g tiled over the cells: (n, Z) Variable."""
        return F.tile(F.reshape(self.velocity_gain, (1, self.latents)), (n, self.side * self.side))

    # z is (N, S*S*K) cell-major, which is an NHWC map (N, S, S, K) as it is; h and c
    # are (N, S*S*C) the same way.
    def _warp(self, m, taps):
        """Warps (N, S*S*C) flat maps by the taps (index, weight), each (N, S², 4)."""
        n = m.shape[0]
        cells = F.reshape(m, (n, self.side * self.side, -1))
        return F.reshape(sparse_warp.warp(cells, *taps), (n, -1))

    def _inputs(self, z, a, v=None):
        """(N, S, S, K + A + 2) array: the gates' non-recurrent input, [z map, a, coords]
        ([z map, v map, a, coords] with the velocity v, (N, Z))."""
        xp = self.xp
        n, s = z.shape[0], self.side
        a = xp.asarray(a, np.float32)
        a_map = xp.broadcast_to(a[:, None, None, :], (n, s, s, a.shape[1]))
        coords = xp.broadcast_to(xp.asarray(self._coords), (n, s, s, 2))
        maps = [z.reshape(n, s, s, self.latents)]
        if v is not None:
            maps.append(v.reshape(n, s, s, self.latents))
        return xp.concatenate([*maps, a_map, coords], axis=3)

    def _head(self, h, z_warped, v_warped=None):
        """The raw mixture (N, 3 * K_mix * Z) of z_{t+1} from the warped h (N, S² C)
        and the warped z_t (N, Z) (an array, or a Variable in a rollout): offsets from
        the warped z (carried by the transport when the M has one; moved on by g times
        the warped velocity `v_warped` (N, Z) when it has velocity)."""
        n, s, k = h.shape[0], self.side, self.latents
        head_in = F.concat(
            [F.reshape(h, (n * s * s, self.channels)), F.reshape(z_warped, (n * s * s, k))]
        )
        if self.head_kernel == 1:
            raw = self.mdn(head_in)
        else:
            pad = self.head_kernel // 2
            maps = F.pad(
                F.reshape(head_in, (n, s, s, -1)),
                ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                "constant",
            )
            raw = self.mdn(maps)
        raw = F.reshape(raw, (n, s * s, -1))
        base = z_warped
        if self.transport:
            raw, logits = F.split_axis(raw, [3 * self.n_mixtures * k], axis=2)
            base = self._transported(z_warped, logits)
        if self.velocity:
            base = base + self._velocity_gain(n) * v_warped
        raw = F.reshape(raw, (n, s * s, 3, self.n_mixtures, k))
        raw = F.reshape(F.transpose(raw, (0, 2, 3, 1, 4)), (n, 3, self.n_mixtures, self.z_size))
        logit, mu, log_sigma = F.split_axis(raw, 3, axis=1)
        mu = mu + F.broadcast_to(F.reshape(base, (n, 1, 1, self.z_size)), mu.shape)
        return F.reshape(F.concat([logit, mu, log_sigma], axis=1), (n, -1))

    def _transported(self, z_warped, logits):
        """(N, Z): each cell's latents as the softmax(logits)-weighted sum of its 3 x 3
        neighbours' (the map's edge repeated outside it), in Chainer functions.

        Args:
            z_warped: (N, Z) array or Variable; logits: (N, S², 9) Variable.
        """
        n, s, k = z_warped.shape[0], self.side, self.latents
        zmap = F.reshape(z_warped, (n, s, s, k))
        zmap = F.concat([zmap[:, :1], zmap, zmap[:, -1:]], axis=1)
        zmap = F.concat([zmap[:, :, :1], zmap, zmap[:, :, -1:]], axis=2)
        w = F.reshape(F.softmax(logits, axis=2), (n, s, s, TRANSPORT_TAPS, 1))
        out = None
        for tap in range(TRANSPORT_TAPS):
            di, dj = divmod(tap, 3)
            term = F.broadcast_to(w[:, :, :, tap], (n, s, s, k)) * zmap[:, di : di + s, dj : dj + s]
            out = term if out is None else out + term
        return F.reshape(out, (n, self.z_size))

    def _transported_array(self, z_warped, logits):
        """`_transported` on arrays, without a graph (the same operations in order)."""
        xp = self.xp
        n, s, k = z_warped.shape[0], self.side, self.latents
        zmap = z_warped.reshape(n, s, s, k)
        zmap = xp.concatenate([zmap[:, :1], zmap, zmap[:, -1:]], axis=1)
        zmap = xp.concatenate([zmap[:, :, :1], zmap, zmap[:, :, -1:]], axis=2)
        w = logits - logits.max(axis=2, keepdims=True)
        w = xp.exp(w)
        w /= w.sum(axis=2, keepdims=True)
        w = w.reshape(n, s, s, TRANSPORT_TAPS, 1)
        out = None
        for tap in range(TRANSPORT_TAPS):
            di, dj = divmod(tap, 3)
            term = w[:, :, :, tap] * zmap[:, di : di + s, dj : dj + s]
            out = term if out is None else out + term
        return out.reshape(n, self.z_size)

    def _cell(self, x, taps, h, c):
        """One step in Chainer functions (the reference, and the path with
        `chainer.config.fast_lstm = False`): the warped (h, c), flat."""
        n, s, ch = x.shape[0], self.side, self.channels
        maps = F.concat([x, F.reshape(h, (n, s, s, ch))], axis=3)
        pad = self.kernel // 2
        gates = self.gates(F.pad(maps, ((0, 0), (pad, pad), (pad, pad), (0, 0)), "constant"))
        g_a, g_i, g_f, g_o = F.split_axis(F.reshape(gates, (n, s * s, 4 * ch)), 4, axis=2)
        c_new = F.sigmoid(g_f) * F.reshape(c, (n, s * s, ch)) + F.sigmoid(g_i) * F.tanh(g_a)
        h_new = F.sigmoid(g_o) * F.tanh(c_new)
        return self._warp(h_new, taps), self._warp(c_new, taps)

    def forward(self, z, a, state=None):
        """Teacher-forced pass over whole sequences (the training graph).

        Args:
            z: (B, T, Z) float32 latents; a: (B, T, A) float32 actions.
            state: (h, c), two (B, hidden) arrays or Variables; zeros when None (the
                state gets no gradient: truncated BPTT cuts there).

        Returns:
            `SequenceOutput` of Variables (as `MDNRNN.forward`).
        """
        xp = self.xp
        z, a = (xp.asarray(v.array if isinstance(v, chainer.Variable) else v, np.float32)
                for v in (z, a))  # fmt: skip
        batch, steps, _ = z.shape
        flat_z, flat_a = z.reshape(batch * steps, -1), a.reshape(batch * steps, -1)
        taps = ego_warp.warp_taps(flat_a, self.offsets)
        cells = self.side * self.side
        z_warped = ego_warp.warp_maps(flat_z.reshape(-1, cells, self.latents), taps)
        z_warped = z_warped.reshape(batch * steps, -1)
        h, c = self.initial_state(batch) if state is None else state
        h, c = (v.array if isinstance(v, chainer.Variable) else v for v in (h, c))
        v_warped = v = None
        if self.velocity:  # each step's z against the last one, in its own frame
            c, last, known = self._split_c(c)
            zw = z_warped.reshape(batch, steps, -1)
            last = xp.concatenate([last[:, None], zw[:, :-1]], axis=1)
            known = xp.concatenate([known[:, None], xp.ones((batch, steps - 1, 1), np.float32)],
                                   axis=1)  # fmt: skip
            v = (known * (z - last)).reshape(batch * steps, -1)
            v_warped = ego_warp.warp_maps(v.reshape(-1, cells, self.latents), taps)
            v_warped = v_warped.reshape(batch * steps, -1)
        x = self._inputs(flat_z, flat_a, v).reshape(batch, steps, self.side, self.side, -1)
        taps = tuple(t.reshape(batch, steps, cells, -1) for t in taps)
        if getattr(chainer.config, "fast_lstm", True):
            hs, h, c, cs = map_lstm(x, self.gates.W, self.gates.b, taps, h, c)
            cs = cs.array
        else:
            hs, cs = [], []
            for t in range(steps):
                h, c = self._cell(x[:, t], tuple(v[:, t] for v in taps), h, c)
                hs.append(h)
                cs.append(c.array)
            hs, cs = F.stack(hs, axis=1), xp.stack(cs, axis=1)
        if self.velocity:  # the state carries the last z, warped, and that it is known
            zw = z_warped.reshape(batch, steps, -1)
            c = chainer.Variable(self._join_c(getattr(c, "array", c), zw[:, -1]))
            cs = self._join_c(cs, zw)
        flat = F.reshape(hs, (batch * steps, self.hidden_size))
        mixture = F.reshape(self._head(flat, z_warped, v_warped), (batch, steps, -1))
        if not self.outcome_head:
            return SequenceOutput(hs, mixture, None, None, (h, c), cells=cs)
        logit = F.reshape(self.outcome(flat), (batch, steps, len(OUTCOME_CLASSES)))
        shaping = F.reshape(self.shaping(flat), (batch, steps))
        reward, done, _ = self.outcome_values(logit.array, shaping.array)
        reward, done = chainer.Variable(reward), chainer.Variable(done)
        return SequenceOutput(hs, mixture, reward, done, (h, c), logit, shaping, cs)

    def rollout(self, z0, a, state):
        """M's open-loop dream at tau 0, as a graph: the rollout loss's forward.

        From the real z0 and the state before it, each step reads the last z (the real
        one first, then its own prediction) and the real action, and predicts the next
        z as the mean of its likeliest component (what `step` and `sample` at tau 0
        give; the choice of component carries no gradient, its mean does).

        Args:
            z0: (N, Z) float32 array; a: (N, K, A) float32 array, the K actions.
            state: (h, c), two (N, hidden) arrays: M's state before z0.

        Returns:
            (zs, hs): Variables, zs (N, K, Z) the predicted z after each step, hs
            (N, K, hidden) the warped h after each step (what the heads read).
        """
        xp = self.xp
        n, s = z0.shape[0], self.side
        a = xp.asarray(a, np.float32)
        z = chainer.Variable(xp.asarray(z0, np.float32))
        h, c = state
        if self.velocity:
            c, last, known = self._split_c(c)
        coords = xp.broadcast_to(xp.asarray(self._coords), (n, s, s, 2))
        zs, hs = [], []
        for k in range(a.shape[1]):
            taps = ego_warp.warp_taps(a[:, k], self.offsets)
            a_map = xp.broadcast_to(a[:, k, None, None, :], (n, s, s, a.shape[2]))
            maps = [F.reshape(z, (n, s, s, self.latents))]
            v_warped = None
            if self.velocity:
                v = F.broadcast_to(known, z.shape) * (z - last)
                maps.append(F.reshape(v, (n, s, s, self.latents)))
                v_warped = self._warp(v, taps)
            x = F.concat([*maps, a_map, coords], axis=3)
            h, c = self._cell(x, taps, h, c)
            z_warped = self._warp(z, taps)
            raw = F.reshape(self._head(h, z_warped, v_warped), (n, 3, self.n_mixtures, -1))
            if self.velocity:  # the next step's last z: this one's, warped (with its graph)
                last, known = z_warped, xp.ones((n, 1), np.float32)
            logit, mu = raw[:, 0], raw[:, 1]
            pick = xp.argmax(logit.array, axis=1)  # (N, Z): the likeliest component
            chosen = (xp.arange(self.n_mixtures)[None, :, None] == pick[:, None, :]).astype(
                np.float32
            )
            z = F.sum(mu * chosen, axis=1)
            zs.append(z)
            hs.append(h)
        return F.stack(zs, axis=1), F.stack(hs, axis=1)

    def step(self, z, a, state=None, mixture=True):
        """One step for a batch of agents, without a graph (as `MDNRNN.step`; the
        mixture is always returned, since the state's update computes it).

        Returns:
            `StepOutput` of arrays.
        """
        z, a, h, c = step_inputs(self, z, a, state)
        taps = ego_warp.warp_taps(a, self.offsets)
        v = v_warped = None
        if self.velocity:
            c, last, known = self._split_c(c)
            v = known * (z - last)
            v_warped = ego_warp.warp_maps(v.reshape(len(z), -1, self.latents), taps)
            v_warped = v_warped.reshape(len(z), -1)
        x = self._inputs(z, a, v)
        w, b = self.gates.W.array, self.gates.b.array
        h, c, _ = cell_step(x, h, c, w, b, taps)
        z_warped = ego_warp.warp_maps(z.reshape(len(z), -1, self.latents), taps)
        z_warped = z_warped.reshape(len(z), -1)
        with chainer.no_backprop_mode(), chainer.using_config("train", False):
            raw = self._head_array(h, z_warped, v_warped)
        if self.velocity:
            c = self._join_c(c, z_warped)
        return StepOutput(h, (h, c), self.split(raw), *self.heads(h))

    def _head_array(self, h, z_warped, v_warped=None):
        """`_head` on arrays, without a graph: the same values in about a tenth of the
        Chainer calls (a dream or a plan steps M thousands of times)."""
        xp = self.xp
        n, s, k = h.shape[0], self.side, self.latents
        head_in = xp.concatenate(
            [h.reshape(n, s * s, self.channels), z_warped.reshape(n, s * s, k)], axis=2
        )
        if self.head_kernel == 1:
            raw = self.mdn(head_in.reshape(n * s * s, -1)).array
        else:
            pad = self.head_kernel // 2
            maps = xp.pad(head_in.reshape(n, s, s, -1), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            raw = self.mdn(maps).array
        raw = raw.reshape(n, s * s, -1)
        base = z_warped
        if self.transport:
            cut = 3 * self.n_mixtures * k
            raw, base = raw[:, :, :cut], self._transported_array(z_warped, raw[:, :, cut:])
        if self.velocity:
            base = base + xp.tile(self.velocity_gain.array, s * s)[None, :] * v_warped
        raw = raw.reshape(n, s * s, 3, self.n_mixtures, k).transpose(0, 2, 3, 1, 4)
        raw = raw.reshape(n, 3, self.n_mixtures, self.z_size)
        raw[:, 1] += base.reshape(n, 1, self.z_size)
        return raw.reshape(n, -1)

    def task_prediction(self, *args, **kwargs):
        raise ValueError("the map M has no task head (04 --task-weight needs --arch lstm)")


class MapOutcomeHead(chainer.Chain):
    """How a step ends, from the flattened (N, S² C) h map: a 3 x 3 convolution of
    `hidden` ReLU channels over the map (zero-padded, NHWC), then linear over all cells.

    Args:
        side: int, S; channels: int, C; hidden: int, the convolution's channels.
    """

    def __init__(self, side, channels, hidden):
        super().__init__()
        self.side, self.channels, self.hidden = int(side), int(channels), int(hidden)
        with self.init_scope():
            self.conv = ConvolutionNHWC(self.channels, self.hidden, 3, stride=1, activation="relu")
            self.out = L.Linear(self.hidden * self.side * self.side, len(OUTCOME_CLASSES))

    def forward(self, h):
        n, s = h.shape[0], self.side
        maps = F.pad(F.reshape(h, (n, s, s, self.channels)), ((0, 0), (1, 1), (1, 1), (0, 0)),
                     "constant")  # fmt: skip
        return self.out(F.reshape(self.conv(maps), (n, -1)))


def _rnn_class(arch: str):
    """The M class that an "arch" names: `MapRNN` for "map", `MDNRNN` for "lstm"."""
    if arch not in ARCHS:
        raise ValueError(f"unknown M architecture {arch!r}: one of {', '.join(ARCHS)}")
    return MapRNN if arch == "map" else MDNRNN


def constructor_defaults(config: dict) -> dict:
    """The defaults of the constructor that `build_rnn(config)` calls, by argument
    name: what an M saved before an argument existed was built with."""
    params = inspect.signature(_rnn_class(config.get("arch", "lstm")).__init__).parameters
    return {p.name: p.default for p in params.values() if p.default is not inspect.Parameter.empty}


def build_rnn(config: dict):
    """M from its sidecar config: `MapRNN` for "arch": "map", else `MDNRNN`."""
    config = dict(config)
    return _rnn_class(config.pop("arch", "lstm"))(**config)
