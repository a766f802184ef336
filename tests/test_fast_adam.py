"""lib.kernels.fast_adam: agreement with Chainer's Adam, hooks, snapshots, fallback.

The CuPy fallback (`update_core_gpu`, inherited from Chainer) is not tested
here: the test machine has no GPU.
"""

import chainer
import chainer.links as L
import numpy as np
import pytest
from chainer import serializers
from chainer.optimizers import adam

from lib.kernels import fast_adam, fastconv
from lib.kernels.fast_adam import FastAdam

STEPS = 6


class _Net(chainer.Chain):
    """Parameters of several shapes; `big.W` is large enough to be split over threads."""

    def __init__(self, dtype=np.float32):
        super().__init__()
        with chainer.using_config("dtype", dtype), self.init_scope():
            self.small = L.Linear(7, 5)
            self.big = L.Linear(300, 256)
        rng = np.random.default_rng(0)
        for _, param in sorted(self.namedparams()):
            param.array[...] = rng.standard_normal(param.shape)


def _make(cls, clip, dtype=np.float32, **kwargs):
    model = _Net(dtype)
    optimizer = cls(alpha=1e-2, **kwargs)
    optimizer.setup(model)
    if clip:
        # Small enough that clipping happens on every step.
        optimizer.add_hook(chainer.optimizer_hooks.GradientClipping(1.0))
    return model, optimizer


def _steps(model, optimizer, first, last):
    """Random gradients for steps [first, last), the same for any optimizer."""
    for step in range(first, last):
        rng = np.random.default_rng(100 + step)
        for _, param in sorted(model.namedparams()):
            param.grad = rng.standard_normal(param.shape).astype(param.dtype)
        optimizer.update()


def _state(model, optimizer):
    """name -> array for every parameter, `m` and `v`, plus the step counts."""
    out = {"t": optimizer.t}
    for name, param in model.namedparams():
        out[name] = param.array
        out[name + "/t"] = param.update_rule.t
        for key in ("m", "v"):
            out[f"{name}/{key}"] = param.update_rule.state[key]
    return out


def _snapshot(obj):
    """key -> frozen copy of every array `obj` serializes (what save_npz writes)."""
    target = {}
    serializers.DictionarySerializer(target).save(obj)
    # DictionarySerializer keeps references to the live arrays.
    return {key: np.array(value) for key, value in target.items()}


def _assert_close(actual, expected, rtol):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, np.ndarray):
            assert actual[key].dtype == value.dtype and actual[key].shape == value.shape, key
            scale = np.abs(value).max()
            np.testing.assert_allclose(
                actual[key], value, rtol=rtol, atol=rtol * scale, err_msg=key
            )
        else:
            assert actual[key] == value, key


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "grad_clip"])
def test_matches_chainer_adam(clip, monkeypatch):
    ref_model, ref_opt = _make(chainer.optimizers.Adam, clip)
    _steps(ref_model, ref_opt, 0, STEPS)

    # The fused kernel must do all the work, with big.W split over two threads.
    def chainer_update(self, param):
        raise AssertionError("fell back to Chainer's update")

    monkeypatch.setattr(adam.AdamRule, "update_core_cpu", chainer_update)
    monkeypatch.setattr(fastconv, "_threads", lambda: 2)
    model, opt = _make(FastAdam, clip)
    assert model.big.W.size >= fast_adam._SPLIT_MIN
    _steps(model, opt, 0, STEPS)
    # Same operations in the same order: in practice bit-identical.
    _assert_close(_state(model, opt), _state(ref_model, ref_opt), rtol=1e-6)


def test_float64_is_fused_and_matches_chainer_bit_for_bit(monkeypatch):
    calls = []
    kernel = fast_adam._adam_kernel
    monkeypatch.setattr(fast_adam, "_adam_kernel", lambda *a: calls.append(1) or kernel(*a))
    ref_model, ref_opt = _make(chainer.optimizers.Adam, False, np.float64)
    model, opt = _make(FastAdam, False, np.float64)
    _steps(ref_model, ref_opt, 0, 3)
    _steps(model, opt, 0, 3)
    assert calls  # the fused kernel ran, not Chainer's update
    _assert_close(_state(model, opt), _state(ref_model, ref_opt), rtol=0)


def test_float16_falls_back_to_chainers_update(monkeypatch):
    """float16 never reaches the fused kernel, and takes Chainer's own update, bit for
    bit. (Not Adam in exact arithmetic: in float16 eps = 1e-8 is 0 and a small g² is 0,
    so where v underflows the step blows up; about 0.4 % of this net's elements do
    after three steps. The project trains in float32.)"""

    def refuse(*args):
        raise AssertionError("float16 must not reach the fused kernel")

    monkeypatch.setattr(fast_adam, "_adam_kernel", refuse)
    ref_model, ref_opt = _make(chainer.optimizers.Adam, False, np.float16)
    model, opt = _make(FastAdam, False, np.float16)
    _steps(ref_model, ref_opt, 0, 3)
    _steps(model, opt, 0, 3)
    _assert_close(_state(model, opt), _state(ref_model, ref_opt), rtol=0)


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "grad_clip"])
def test_snapshot_resume_is_exact(clip):
    whole_model, whole_opt = _make(FastAdam, clip)
    _steps(whole_model, whole_opt, 0, STEPS)

    model, opt = _make(FastAdam, clip)
    _steps(model, opt, 0, STEPS // 2)
    model_snapshot, opt_snapshot = _snapshot(model), _snapshot(opt)

    resumed_model, resumed_opt = _make(FastAdam, clip)
    serializers.NpzDeserializer(model_snapshot).load(resumed_model)
    serializers.NpzDeserializer(opt_snapshot).load(resumed_opt)
    assert resumed_opt.t == STEPS // 2
    _steps(resumed_model, resumed_opt, STEPS // 2, STEPS)
    _assert_close(_state(resumed_model, resumed_opt), _state(whole_model, whole_opt), rtol=0)


def test_snapshots_interchange_with_chainer_adam():
    model, opt = _make(FastAdam, False)
    ref_model, ref_opt = _make(chainer.optimizers.Adam, False)
    _steps(model, opt, 0, 2)
    _steps(ref_model, ref_opt, 0, 2)
    ours, theirs = _snapshot(opt), _snapshot(ref_opt)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}

    # A Chainer Adam snapshot resumes under FastAdam and continues like it.
    resumed_opt = FastAdam(alpha=1e-2)
    resumed_opt.setup(ref_model)  # parameters as Chainer's Adam left them
    serializers.NpzDeserializer(theirs).load(resumed_opt)
    _steps(ref_model, resumed_opt, 2, 4)
    _steps(model, opt, 2, 4)
    _assert_close(_state(ref_model, resumed_opt), _state(model, opt), rtol=1e-6)


@pytest.mark.parametrize(
    "option", [{"weight_decay_rate": 1e-4}, {"amsgrad": True}, {"adabound": True}]
)
def test_unsupported_options_raise(option):
    with pytest.raises(NotImplementedError):
        FastAdam(**option)
    # Switched on after construction: refused at the first update.
    model, opt = _make(FastAdam, False)
    for key, value in option.items():
        setattr(opt.hyperparam, key, value)
    with pytest.raises(NotImplementedError):
        _steps(model, opt, 0, 1)


def test_division_by_zero_gives_nan_like_chainer():
    # eps = 0 and a zero gradient: 0 / 0 in the step, nan in Chainer's NumPy code.
    results = []
    for cls in (chainer.optimizers.Adam, FastAdam):
        model, opt = _make(cls, False, eps=0.0)
        for param in model.params():
            param.grad = np.zeros_like(param.array)
        with np.errstate(invalid="ignore", divide="ignore"):
            opt.update()
        results.append(_state(model, opt))
    assert np.isnan(results[0]["/big/W"]).all()
    for key, value in results[0].items():
        np.testing.assert_array_equal(results[1][key], value, err_msg=key)
