"""lib/validate.py: the constructor checks that the models and planners share."""

import math

import numpy as np
import pytest

from lib import validate
from lib.control.dream_planner import PlanSettings
from lib.models.map_rnn import MapRNN
from lib.models.mdn_rnn import MDNRNN


def test_counts_returns_ints_in_order():
    assert validate.counts(a=3, b=np.int64(1), c=2.0) == [3, 1, 2]
    assert all(type(v) is int for v in validate.counts(a=3, b=np.int64(1), c=2.0))


@pytest.mark.parametrize("value", [0, -1, 2.5, True, math.nan])
def test_counts_names_the_bad_value(value):
    with pytest.raises(ValueError, match=f"^b must be a whole number >= 1, got {value}$"):
        validate.counts(a=1, b=value)


def test_non_negatives():
    assert validate.non_negatives(x=0, y=1.5) == [0.0, 1.5]
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match=f"^y must be >= 0, got {bad}$"):
            validate.non_negatives(x=0, y=bad)


def test_the_models_and_the_planner_use_them():
    with pytest.raises(ValueError, match="hidden_size must be a whole number >= 1, got 0"):
        MDNRNN(z_size=4, hidden_size=0)
    with pytest.raises(ValueError, match="channels must be a whole number >= 1, got 0"):
        MapRNN(z_size=4 * 9, side=3, channels=0)
    with pytest.raises(ValueError, match="cem_iters must be a whole number >= 1, got 1.5"):
        PlanSettings(cem_iters=1.5)
    with pytest.raises(ValueError, match="sigma must be >= 0, got -1"):
        PlanSettings(sigma=-1)
    planner = PlanSettings(horizon=3, candidates=16, sigma=0.5)
    assert (planner.horizon, planner.candidates, planner.sigma) == (3, 16, 0.5)
    assert type(planner.horizon) is int and type(planner.sigma) is float
