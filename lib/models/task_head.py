"""The task head (beyond the paper): a linear map from a model's features to the
action a privileged teacher takes there (01 / 02 `--labels`).

V's head reads z's mean (03 `--task-weight`); M's reads [z_t, h_t], the very input
of the linear C (04 `--task-weight`). The agent never reads either head: the
gradient through it shapes what z and h hold, so that a linear C fitted on them
afterwards has what it needs.

Targets are the actions before C's tanh (their atanh, clipped), as C's own fit
takes them (`lib.control.imitation.LinearFit`).
"""

from __future__ import annotations

import chainer.functions as F
import numpy as np

TASK_CLIP = 0.96  # atanh(0.96) = 1.95: a saturated action is a finite target


def task_targets(labels, xp=np):
    """(atanh of the actions clipped to ±TASK_CLIP, 0/1 mask of the labelled rows):
    NaN rows (no label) are masked out."""
    labels = xp.asarray(labels, np.float32)
    mask = ~xp.isnan(labels)
    target = xp.arctanh(xp.clip(xp.where(mask, labels, 0), -TASK_CLIP, TASK_CLIP))
    return target.astype(np.float32), mask.astype(np.float32)


def task_loss(prediction, labels, weight=None):
    """Summed squared error of the head's prediction (N, A) against
    `task_targets(labels)` over the labelled rows.

    Args:
        prediction: (N, A) Variable.
        labels: (N, A) teacher actions (NaN: none).
        weight: optional (N,) 0/1 row weights (M's step mask); the error is then
            divided by their sum (at least 1), else by N.

    Returns:
        Scalar Variable: the error per row.
    """
    xp = prediction.xp
    target, mask = task_targets(labels, xp)
    n = prediction.shape[0]
    if weight is not None:
        weight = xp.asarray(weight, np.float32).reshape(n, 1)
        mask = mask * weight
        n = max(float(weight.sum()), 1.0)
    return F.sum(F.squared_difference(prediction, target) * mask) / n


def task_r2(residual, target, mask):
    """R² of a task head over the labelled rows: 1 − `residual` (its summed squared
    error there, over the actions) / the targets' total sum of squares about their
    mean; NaN when the targets do not vary.

    Args:
        residual: float, the head's squared error summed over the rows `mask` keeps.
        target, mask: (N, A) `task_targets` (a row counts where its mask is all > 0).
    """
    t = target[mask.all(axis=1)]
    total = float(((t - t.mean(axis=0)) ** 2).sum())
    return 1.0 - residual / total if total > 0 else float("nan")
