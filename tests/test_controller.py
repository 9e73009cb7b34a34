"""The ADA controller alone: the p update law, clipping, batch-size independence, r_v."""

from __future__ import annotations

import pytest
import torch

from ada.controller import AdaController, p_update, r_t, r_v


def feed(ctrl: AdaController, batch: int, sign: float, steps: int) -> list[float]:
    """Run `steps` minibatches whose D signs on reals are all `sign`; return p after each."""
    trajectory = []
    for idx in range(1, steps + 1):
        ctrl.accumulate(torch.full([batch], sign))
        ctrl.step(idx, batch)
        trajectory.append(ctrl.p)
    return trajectory


def test_signs_above_target_raise_p_at_the_stated_rate():
    ctrl = AdaController(target=0.6, interval=4, ada_kimg=500)
    p = feed(ctrl, batch=32, sign=1.0, steps=40)
    step = 32 * 4 / (500 * 1000)
    assert p[2] == 0  # no update before the 4th minibatch
    assert p[3] == pytest.approx(step)
    assert p[-1] == pytest.approx(10 * step)


def test_signs_below_target_lower_p():
    ctrl = AdaController(target=0.6, interval=4, ada_kimg=500, p=0.5)
    p = feed(ctrl, batch=16, sign=-1.0, steps=8)
    assert p[-1] == pytest.approx(0.5 - 2 * 16 * 4 / 500_000)


def test_p_is_clipped_to_zero_and_one():
    low = AdaController(target=0.6, interval=1, ada_kimg=0.001)
    assert feed(low, 8, -1.0, 3)[-1] == 0.0
    high = AdaController(target=0.6, interval=1, ada_kimg=0.001)
    assert feed(high, 8, 1.0, 3)[-1] == 1.0
    capped = AdaController(target=0.6, interval=1, ada_kimg=0.001, p_max=0.7)
    assert feed(capped, 8, 1.0, 3)[-1] == 0.7


def test_same_p_per_image_for_batch_8_and_32():
    small = AdaController(interval=4, ada_kimg=10)
    large = AdaController(interval=4, ada_kimg=10)
    p_small = feed(small, 8, 1.0, 64)  # 512 images
    p_large = feed(large, 32, 1.0, 16)  # 512 images
    for k in range(1, 5):  # after every 128 images
        assert p_small[16 * k - 1] == pytest.approx(p_large[4 * k - 1])


def test_r_t_is_the_mean_sign_over_the_interval():
    ctrl = AdaController(target=0.6, interval=2, ada_kimg=500)
    ctrl.accumulate(torch.tensor([1.0, 1.0, -1.0, 1.0]))
    ctrl.step(1, 4)
    ctrl.accumulate(torch.tensor([1.0, -1.0, -1.0, -1.0]))
    assert ctrl.step(2, 4)
    assert ctrl.last_r_t == pytest.approx(0.0)
    assert ctrl.p == 0.0  # r_t 0 < target: p would go down, clipped at 0


def test_fixed_mode_measures_but_does_not_move_p():
    ctrl = AdaController(interval=1, ada_kimg=1, p=0.3, adjust=False)
    feed(ctrl, 8, 1.0, 5)
    assert ctrl.p == 0.3
    assert ctrl.last_r_t == 1.0


def test_rv_heuristic_drives_p():
    ctrl = AdaController(target=0.5, interval=1, ada_kimg=1, heuristic="rv")
    ctrl.last_r_v = 0.9
    feed(ctrl, 10, -1.0, 1)  # r_t says "no overfitting", r_v says "overfitting"
    assert ctrl.p == pytest.approx(10 / 1000)


def test_reduce_sums_statistics_before_the_update():
    ctrl = AdaController(target=0.6, interval=1, ada_kimg=1)
    ctrl.accumulate(torch.tensor([1.0, 1.0]))
    # Stand-in for a second rank whose reals all scored negative: the global r_t is (2 - 6) / 8.
    ctrl.step(1, 8, reduce=lambda t: t + torch.tensor([-6.0, 6.0], dtype=t.dtype))
    assert ctrl.last_r_t == pytest.approx(-0.5)
    assert ctrl.p == 0.0


def test_leak_warning_once_above_threshold():
    ctrl = AdaController(p=0.79)
    assert ctrl.leak_warning() is None
    ctrl.p = 0.85
    assert "0.8" in ctrl.leak_warning()
    assert ctrl.leak_warning() is None


def test_state_round_trip():
    a = AdaController(interval=4, ada_kimg=500)
    feed(a, 8, 1.0, 6)
    b = AdaController(interval=4, ada_kimg=500)
    b.load_state_dict(a.state_dict())
    assert feed(a, 8, 1.0, 8) == feed(b, 8, 1.0, 8)


def test_heuristic_formulas_against_hand_computation():
    assert r_t(3.0, 4.0) == 0.75
    # D: train reals 2.0, validation reals 0.5, fakes -1.0 -> (2 - 0.5) / (2 + 1) = 0.5
    assert r_v(2.0, 0.5, -1.0) == pytest.approx(0.5)
    assert r_v(2.0, 2.0, -1.0) == 0.0
    assert r_v(1.0, 1.0, 1.0) == 0.0  # degenerate: D cannot tell anything apart
    assert p_update(0.2, 0.7, 0.6, 64, 4, 500) == pytest.approx(0.2 + 64 * 4 / 500_000)


def test_signs_not_yet_read_are_kept_in_the_state():
    """A snapshot between two updates carries the signs collected so far: a resumed run updates p as
    the uninterrupted one does."""
    straight = AdaController(target=0.6, interval=4, ada_kimg=1)
    saved = AdaController(target=0.6, interval=4, ada_kimg=1)
    for ctrl in (straight, saved):
        ctrl.accumulate(torch.tensor([1.0, 1.0, float("nan"), -1.0]))
    resumed = AdaController(target=0.6, interval=4, ada_kimg=1)
    resumed.load_state_dict(saved.state_dict())
    assert resumed.sign_count == 3  # the NaN logit has no sign and is not counted
    for ctrl in (straight, resumed):
        ctrl.accumulate(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        assert ctrl.step(4, 4)
    assert resumed.last_r_t == straight.last_r_t == pytest.approx(5 / 7)
    assert resumed.p == straight.p > 0


def test_every_rank_joins_the_reduction_even_without_finite_signs():
    """A rank whose logits were all NaN must still take part in the collective, or the others hang."""
    calls = []

    def reduce(sums):
        calls.append(sums.clone())
        return sums + torch.tensor([4.0, 4.0], dtype=torch.float64)  # another rank's four +1 signs

    ctrl = AdaController(target=0.6, interval=1, ada_kimg=1)
    ctrl.accumulate(torch.full([4], float("nan")))
    assert ctrl.step(1, 4, reduce=reduce)
    assert len(calls) == 1 and calls[0].tolist() == [0.0, 0.0]
    assert ctrl.last_r_t == 1.0 and ctrl.p > 0


def test_p_holds_until_start_kimg_while_r_t_is_measured():
    ctrl = AdaController(target=0.6, interval=1, ada_kimg=1, start_kimg=0.04)
    for idx in range(1, 5):  # 4 steps of 10 images: 40 images seen before each update below 40
        ctrl.accumulate(torch.full([10], 1.0))
        ctrl.step(idx, 10, nimg=idx * 10 - 10)
    assert ctrl.p == 0.0 and ctrl.last_r_t == 1.0
    ctrl.accumulate(torch.full([10], 1.0))
    ctrl.step(5, 10, nimg=40)
    assert ctrl.p == pytest.approx(10 / 1000)
