"""Loss scaling and the device-side skip of non-finite steps (ada.loss_scaler)."""

import pytest
import torch

from ada.loss_scaler import LossScaler, found_non_finite, next_scale


def scalar(v: float) -> torch.Tensor:
    return torch.tensor(float(v))


def test_overflow_halves_the_scale_and_restarts_the_count():
    scale, good = next_scale(scalar(1024), scalar(7), found_inf=scalar(1), growth_interval=10)
    assert (scale.item(), good.item()) == (512, 0)


def test_scale_doubles_after_growth_interval_good_steps():
    scale, good = scalar(8), scalar(0)
    history = []
    for _ in range(7):
        scale, good = next_scale(scale, good, found_inf=scalar(0), growth_interval=3)
        history.append(scale.item())
    assert history == [8, 8, 16, 16, 16, 32, 32]
    assert good.item() == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_found_non_finite_sees_any_bad_element(bad):
    grads = [torch.ones(3, 3), torch.zeros(5)]
    assert found_non_finite(grads).item() == 0
    grads[1][2] = bad
    assert found_non_finite(grads).item() == 1


def adam_pair():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    make = lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.0, 0.99), eps=1e-8, fused=True)  # noqa: E731
    return a, make(a), b, make(b)


def test_disabled_scaler_steps_exactly_like_plain_adam():
    a, opt_a, b, opt_b = adam_pair()
    scaler = LossScaler(torch.device("cpu"), enabled=False)
    for step in range(3):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        for params, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss = (x @ params[0] + params[1]).square().mean()
            (scaler.scaled(loss) if params is a else loss).backward()
        scaler.step(opt_a, [p.grad for p in a])
        opt_b.step()
    for p, q in zip(a, b, strict=True):
        assert torch.equal(p, q)


def test_scaled_loss_gives_the_unscaled_update():
    a, opt_a, b, opt_b = adam_pair()
    scaler = LossScaler(torch.device("cpu"), enabled=True, init_scale=2.0**12)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    for params in (a, b):
        loss = (x @ params[0] + params[1]).square().mean()
        (scaler.scaled(loss) if params is a else loss).backward()
    assert a[1].grad.abs().max() > 1000 * b[1].grad.abs().max()  # the scale reached the gradients
    scaler.step(opt_a, [p.grad for p in a])
    opt_b.step()
    for p, q in zip(a, b, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_non_finite_step_is_skipped_counted_and_lowers_the_scale():
    a, opt, _, _ = adam_pair()
    scaler = LossScaler(torch.device("cpu"), enabled=True, init_scale=64.0)
    before = [p.detach().clone() for p in a]
    for _ in range(3):
        opt.zero_grad()
        (scaler.scaled(a[0].sum() * float("inf")) + a[1].sum()).backward()
        scaler.step(opt, [p.grad for p in a])
    assert all(torch.equal(p, q) for p, q in zip(a, before, strict=True))
    assert opt.state[a[0]]["exp_avg"].abs().max() == 0  # the moments did not see the bad gradients
    assert scaler.scale.item() == 8.0
    assert scaler.take_counts() == (3, 3, 3)
    opt.zero_grad()
    scaler.scaled(a[0].sum() + a[1].sum()).backward()
    scaler.step(opt, [p.grad for p in a])
    assert not torch.equal(a[0], before[0])
    # The streak ended. The longest since the last look is the one that was running then (a streak
    # spanning several looks is counted whole), and nothing new was skipped.
    assert scaler.take_counts() == (0, 3, 0)
    assert scaler.take_counts() == (0, 0, 0)


def test_state_round_trip():
    scaler = LossScaler(torch.device("cpu"), enabled=True, init_scale=256.0)
    scaler.scale, scaler.good_steps, scaler.streak = scalar(32), scalar(5), scalar(2)
    other = LossScaler(torch.device("cpu"), enabled=True)
    other.load_state_dict(scaler.state_dict())
    assert (other.scale.item(), other.good_steps.item(), other.streak.item()) == (32, 5, 2)
    # A scale saved by a float16 run does not switch scaling on in a float32 one ...
    plain = LossScaler(torch.device("cpu"), enabled=False)
    plain.load_state_dict(scaler.state_dict())
    assert plain.scale.item() == 1.0
    # ... and a float32 run's scale of 1 does not carry into a float16 one, which starts afresh.
    resumed = LossScaler(torch.device("cpu"), enabled=True, init_scale=512.0)
    resumed.load_state_dict(plain.state_dict())
    assert resumed.scale.item() == 512.0


def test_adam_state_saved_unfused_loads_into_the_fused_optimiser():
    """Checkpoints from before the fused Adam keep working: the skip needs the fused kernel."""
    from ada.snapshots import load_optimizer_state

    a, opt, _, _ = adam_pair()
    unfused = torch.optim.Adam(a, lr=0.01, betas=(0.0, 0.99), eps=1e-8, foreach=False)
    (a[0].sum() + a[1].sum()).backward()
    unfused.step()
    load_optimizer_state(opt, unfused.state_dict())
    assert opt.param_groups[0]["fused"] is True
    assert opt.state[a[0]]["exp_avg"].abs().max() > 0  # the moments came across
    before = [p.detach().clone() for p in a]
    scaler = LossScaler(torch.device("cpu"), enabled=False)
    opt.zero_grad()
    (a[0].sum() * float("nan")).backward()
    scaler.step(opt, [p.grad for p in a if p.grad is not None])
    assert all(torch.equal(p, q) for p, q in zip(a, before, strict=True))
