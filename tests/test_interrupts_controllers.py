"""Ctrl-C and kill -9 during 07's CMA-ES and the look-ahead trainer, then --resume, give
the uninterrupted run's arrays (the machinery: tests/interruption.py)."""

import signal

import pytest
from interruption import interrupt_and_resume, run_whole


@pytest.fixture(scope="module", params=["07", "lookahead"])
def uninterrupted(request, tiny_models, tmp_path_factory):
    return run_whole(request.param, tiny_models, tmp_path_factory)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_run_resumes_to_the_same_weights(uninterrupted, sig, tiny_models, tmp_path):
    """Ctrl-C (07: after the generation under way, saved; the look-ahead trainer: after
    the batch in hand, saved mid-epoch, or the episode in hand, its last epoch's snapshot
    kept) or kill -9 after the first finished generation or epoch, then --resume:
    the weights, CMA-ES's or the optimizer's state and the counters are those of the
    uninterrupted run, bit for bit (wall-clock times in logs aside)."""
    interrupt_and_resume(uninterrupted, sig, tiny_models, tmp_path)
