"""Loss terms and optimisation details against analytic values."""

from __future__ import annotations

import math

import pytest
import torch

from ada import loss
from ada.build import lazy_adam
from ada.config import TrainConfig
from ada.training import ema_beta


def test_logistic_losses():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    sig = torch.sigmoid(logits)
    assert torch.allclose(loss.g_loss(logits), -torch.log(sig))
    assert torch.allclose(loss.d_loss_real(logits), -torch.log(sig))
    assert torch.allclose(loss.d_loss_gen(logits), -torch.log(1 - sig))


def test_r1_penalty_matches_analytic_gradient():
    # D(x) = sum(a * x^2) / 2 has gradient a * x, so the penalty is sum((a x)^2).
    a = torch.rand(1, 2, 4, 4) + 0.5
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    logits = (a * x.square()).sum(dim=[1, 2, 3]) / 2
    penalty = loss.r1_penalty(logits, x)
    expected = (a * x.detach()).square().sum(dim=[1, 2, 3])
    assert torch.allclose(penalty, expected, rtol=1e-5)
    # It is differentiable: d/dx sum(a^2 x^2) = 2 a^2 x.
    (grad,) = torch.autograd.grad(penalty.sum(), x)
    assert torch.allclose(grad, 2 * a.square() * x.detach(), rtol=1e-5)


def test_path_lengths_of_a_linear_generator():
    # img = W applied to each w (the same matrix for every layer); J^T y is then analytic.
    torch.manual_seed(0)
    num_ws, w_dim, h = 3, 5, 4
    weight = torch.randn(h * h, w_dim)
    ws = torch.randn(2, num_ws, w_dim, requires_grad=True)
    img = (ws @ weight.t()).sum(dim=1).reshape(2, 1, h, h)
    y = torch.randn_like(img)
    lengths = loss.path_lengths(img, ws, y)
    jt_y = y.reshape(2, -1) @ weight  # the same for every layer
    expected = jt_y.square().sum(dim=1).sqrt()  # mean over layers of identical values
    assert torch.allclose(lengths, expected, rtol=1e-5)


def test_path_length_noise_scale():
    img = torch.zeros(4000, 1, 8, 8)
    noise = loss.path_length_noise(img)
    assert noise.std().item() == pytest.approx(1 / 8, rel=0.02)


def test_style_mixing_cutoff_range_and_probability():
    torch.manual_seed(0)
    cuts = [loss.style_mixing_cutoff(6, 0.9) for _ in range(2000)]
    mixed = [c for c in cuts if c < 6]
    assert 0.87 < len(mixed) / len(cuts) < 0.93
    assert set(mixed) == {1, 2, 3, 4, 5}
    assert all(loss.style_mixing_cutoff(6, 0.0) == 6 for _ in range(50))


def test_lazy_regularisation_scales_adam():
    cfg = TrainConfig()
    opt = lazy_adam([torch.nn.Parameter(torch.zeros(1))], cfg, reg_interval=16)
    group = opt.param_groups[0]
    ratio = 16 / 17
    assert group["lr"] == pytest.approx(0.0025 * ratio)
    assert group["betas"] == pytest.approx((0.0, 0.99**ratio))


def test_ema_half_life():
    # After ema_kimg thousand images the old weights count one half.
    beta = ema_beta(batch=32, cur_nimg=10**9, ema_kimg=10, ema_rampup=None)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    # The rampup shortens the half-life early in training.
    assert ema_beta(32, 1000, 10, 0.05) < beta


class ToyMapping(torch.nn.Module):
    """w = z (times a trained scale, 1) for each of two layers: no randomness, no tracked statistics."""

    num_ws = 2

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones([]))

    def forward(self, z, c, update_w_avg=True):
        return (z * self.scale)[:, None, :].repeat(1, self.num_ws, 1)


class ToySynthesis(torch.nn.Module):
    """A 1x4x4 image linear in the mean of the ws."""

    def __init__(self, w_dim: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(w_dim, 16))

    def forward(self, ws):
        return (ws.mean(dim=1) @ self.weight).reshape(-1, 1, 4, 4)


class ToyG(torch.nn.Module):
    z_dim = 3

    def __init__(self):
        super().__init__()
        self.mapping = ToyMapping()
        self.synthesis = ToySynthesis(self.z_dim)


class LinearD(torch.nn.Module):
    """D(x) = sum(a * x): its gradient in x is a, whatever x."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(1, 1, 4, 4))

    def forward(self, img, c):
        return (self.a * img).sum(dim=[1, 2, 3])[:, None]


def toy_loss(pipe=None, **kwargs) -> loss.StyleGAN2Loss:
    torch.manual_seed(0)
    return loss.StyleGAN2Loss(ToyG(), LinearD(), pipe, r1_gamma=kwargs.pop("r1_gamma", 0.5), style_mixing=0.0,
                              **kwargs)


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(n, 1, 4, 4), torch.randn(n, ToyG.z_dim)


def test_logistic_losses_by_hand():
    # -log sigmoid(0) = log 2; -log sigmoid(3) = log(1 + e^-3); -log(1 - sigmoid(-2)) = log(1 + e^-2).
    assert float(loss.g_loss(torch.tensor(0.0))) == pytest.approx(math.log(2))
    assert float(loss.d_loss_real(torch.tensor(3.0))) == pytest.approx(math.log1p(math.exp(-3)))
    assert float(loss.d_loss_gen(torch.tensor(-2.0))) == pytest.approx(math.log1p(math.exp(-2)))
    # Far from 0 they stay finite where log(sigmoid) would not.
    assert float(loss.g_loss(torch.tensor(-100.0))) == pytest.approx(100.0)


def test_gmain_is_the_non_saturating_loss_of_d_on_g():
    lo = toy_loss()
    real, z = batch()
    stats = lo.accumulate_gradients("Gmain", real, None, z, None, gain=1.0)
    W, a = lo.G.synthesis.weight.detach(), lo.D.a.detach().flatten()
    logits = z @ W @ a  # D(G(z)) of the linear toys, by hand
    assert float(stats["loss_G"]) == pytest.approx(float(torch.log1p(torch.exp(-logits)).mean()), rel=1e-5)
    # d/dW mean(softplus(-z W a)) = -mean over the batch of sigmoid(-logit) z a^T.
    expected = -torch.outer(z.t() @ torch.sigmoid(-logits), a) / len(z)
    assert torch.allclose(lo.G.synthesis.weight.grad, expected, atol=1e-6)
    assert lo.D.a.grad is not None  # the trainer clears it: Gmain trains only G


def test_dmain_pushes_reals_up_and_fakes_down_and_reports_real_signs():
    lo = toy_loss()
    real, z = batch()
    stats = lo.accumulate_gradients("Dmain", real, None, z, None, gain=1.0)
    a = lo.D.a.detach()
    fake = lo.G.synthesis(lo.G.mapping(z, None)).detach()
    real_logits, gen_logits = (a * real).sum(dim=[1, 2, 3]), (a * fake).sum(dim=[1, 2, 3])
    expected_loss = torch.log1p(torch.exp(gen_logits)) + torch.log1p(torch.exp(-real_logits))
    assert float(stats["loss_D"]) == pytest.approx(float(expected_loss.mean()), rel=1e-5)
    assert torch.equal(stats["real_signs"].flatten(), real_logits.sign())
    # d/da: sigmoid(D(fake)) fake - sigmoid(-D(real)) real, averaged.
    expected = (torch.sigmoid(gen_logits)[:, None, None, None] * fake
                - torch.sigmoid(-real_logits)[:, None, None, None] * real).mean(dim=0, keepdim=True)
    assert torch.allclose(lo.D.a.grad, expected, atol=1e-6)
    assert lo.G.synthesis.weight.grad is None  # the fakes are generated without a graph


@pytest.mark.parametrize("gain", [1.0, 16.0])
def test_dreg_is_r1_times_gamma_over_two_and_scales_with_the_lazy_gain(gain):
    """For D(x) = sum(a x), grad_x D = a: R1 = gamma / 2 * |a|^2 for every image, d/da = gamma * a."""
    lo = toy_loss(r1_gamma=0.5)
    real, z = batch()
    stats = lo.accumulate_gradients("Dreg", real, None, z, None, gain=gain)
    a = lo.D.a.detach()
    assert float(stats["loss_D_r1"]) == pytest.approx(0.25 * float(a.square().sum()), rel=1e-5)
    assert torch.allclose(lo.D.a.grad, gain * 0.5 * a, rtol=1e-5)
    assert "loss_D" not in stats and "real_signs" in stats


def test_r1_is_taken_with_respect_to_the_real_before_the_pipe_and_through_it():
    """With a pipe x -> 2x, D(pipe(x)) has gradient 2a in the un-augmented x: R1 is four times larger."""
    lo = toy_loss(pipe=lambda img: 2 * img, r1_gamma=0.5)
    real, z = batch()
    stats = lo.accumulate_gradients("Dreg", real, None, z, None, gain=1.0)
    a = lo.D.a.detach()
    assert float(stats["loss_D_r1"]) == pytest.approx(0.25 * 4 * float(a.square().sum()), rel=1e-5)


def test_greg_is_the_path_length_penalty_around_its_running_mean():
    lo = toy_loss(pl_weight=2.0, pl_decay=0.01, pl_batch_shrink=2)
    real, z = batch(4)
    torch.manual_seed(7)
    stats = lo.accumulate_gradients("Greg", real, None, z, None, gain=1.0)
    torch.manual_seed(7)
    y = torch.randn(2, 1, 4, 4) / 4  # the first noise draw of the phase, std 1 / sqrt(h w)
    W = lo.G.synthesis.weight.detach()
    # img = mean_l(w_l) W: each of the two layers' J^T y is W y / 2, so the length is |W y| / 2.
    lengths = (y.reshape(2, 16) @ W.t()).norm(dim=1) / 2
    pl_mean = 0.01 * lengths.mean()  # lerp from 0
    assert float(lo.pl_mean) == pytest.approx(float(pl_mean), rel=1e-5)
    assert float(stats["loss_G_pl"]) == pytest.approx(float(((lengths - pl_mean) ** 2 * 2.0).mean()), rel=1e-4)


def test_a_non_finite_path_length_leaves_the_running_mean_alone():
    lo = toy_loss()
    real, z = batch()
    lo.pl_mean.fill_(0.5)
    with torch.no_grad():
        lo.G.synthesis.weight[0, 0] = float("nan")
    lo.accumulate_gradients("Greg", real, None, z, None, gain=1.0)
    assert float(lo.pl_mean) == 0.5
