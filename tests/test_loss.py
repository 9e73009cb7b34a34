"""Loss terms and optimisation details against analytic values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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


def test_softplus_identity_used_by_the_losses():
    x = torch.linspace(-5, 5, 11)
    assert torch.allclose(F.softplus(-x) - F.softplus(x), -x, atol=1e-6)
    assert math.isclose(float(loss.g_loss(torch.tensor(0.0))), math.log(2), rel_tol=1e-6)
