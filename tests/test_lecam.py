"""LeCam regularisation (ada/lecam.py): the penalty and its anchors against hand computations,
gradcheck, and the penalty inside D's loss."""

from __future__ import annotations

import torch
from torch.autograd import gradcheck

from ada.lecam import LeCamAnchors, debiased, ema_update, lecam_gen_term, lecam_real_term
from ada.loss import StyleGAN2Loss, d_loss_gen, d_loss_real
from tests._tiny import tiny_generator

f64 = torch.float64


def test_penalty_by_hand():
    real = torch.tensor([2.0, -1.0, 0.5])
    gen = torch.tensor([-3.0, 1.5])
    alpha_r, alpha_f = torch.tensor(1.0), torch.tensor(-0.5)
    # relu(D(x) - alpha_F)^2: (2.5^2, 0 (clipped: -1 is below -0.5), 1^2)
    assert torch.allclose(lecam_real_term(real, alpha_f), torch.tensor([6.25, 0.0, 1.0]))
    # relu(alpha_R - D(G(z)))^2: (4^2, 0 (clipped: 1.5 is above 1))
    assert torch.allclose(lecam_gen_term(gen, alpha_r), torch.tensor([16.0, 0.0]))
    r_lc = lecam_real_term(real, alpha_f).mean() + lecam_gen_term(gen, alpha_r).mean()
    assert torch.isclose(r_lc, torch.tensor(7.25 / 3 + 8.0))


def test_clipped_form_equals_the_papers_square_where_d_ranks_normally():
    """Eq. 3 of the paper is the plain square; the authors' code clips. Reals above alpha_F and fakes
    below alpha_R (the usual case) give the same value."""
    torch.manual_seed(0)
    alpha_r, alpha_f = torch.tensor(0.8), torch.tensor(-0.6)
    real = alpha_f + torch.rand(100) * 3
    gen = alpha_r - torch.rand(100) * 3
    assert torch.allclose(lecam_real_term(real, alpha_f), (real - alpha_f).square())
    assert torch.allclose(lecam_gen_term(gen, alpha_r), (gen - alpha_r).square())


def test_penalty_gradients():
    logits = torch.tensor([1.3, -0.7, 0.2, 2.5], dtype=f64, requires_grad=True)
    anchor = torch.tensor(0.1, dtype=f64)
    assert gradcheck(lambda x: lecam_real_term(x, anchor), (logits,))
    assert gradcheck(lambda x: lecam_gen_term(x, anchor), (logits,))
    # d/dD relu(D - a)^2 = 2 (D - a) above the anchor, 0 below.
    (grad,) = torch.autograd.grad(lecam_real_term(logits, anchor).sum(), logits)
    assert torch.allclose(grad, torch.tensor([2.4, 0.0, 0.2, 4.8], dtype=f64))


def test_ema_and_debiasing_by_hand():
    ema = torch.zeros(2)
    ema = ema_update(ema, torch.tensor([2.0, -1.0]), 0.9)  # [0.2, -0.1]
    ema = ema_update(ema, torch.tensor([4.0, -3.0]), 0.9)  # [0.18 + 0.4, -0.09 - 0.3]
    assert torch.allclose(ema, torch.tensor([0.58, -0.39]))
    # Debiased: the weights 0.1 * 0.9 and 0.1 over their sum 0.19.
    assert torch.allclose(debiased(ema, 2, 0.9), torch.tensor([(0.09 * 2 + 0.1 * 4) / 0.19,
                                                               (0.09 * -1 + 0.1 * -3) / 0.19]))
    assert torch.allclose(debiased(ema_update(torch.zeros(2), torch.tensor([5.0, 7.0]), 0.99), 1, 0.99),
                          torch.tensor([5.0, 7.0]))  # the first anchor is the first batch's mean


def test_anchors_move_once_per_step_with_the_mean_over_rounds_and_ranks():
    anchors = LeCamAnchors(0.5, torch.device("cpu"))
    assert anchors.anchors() is None  # no history: no penalty on the first step
    anchors.accumulate(torch.tensor([1.0, 3.0]), torch.tensor([-2.0, -2.0]))
    anchors.accumulate(torch.tensor([5.0, 7.0]), torch.tensor([0.0, -4.0]))  # a second round of the step
    anchors.update()
    alpha_r, alpha_f = anchors.anchors()
    assert (alpha_r.item(), alpha_f.item()) == (4.0, -2.0)
    # Another rank saw reals averaging 0 and fakes averaging 2: `reduce` sums over both.
    anchors.accumulate(torch.tensor([8.0, 8.0]), torch.tensor([-6.0, -6.0]))
    anchors.update(reduce=lambda sums: sums + torch.tensor([0.0, 2.0, 4.0, 2.0]))
    alpha_r, alpha_f = anchors.anchors()
    # ema: 0.5 * [2, -1] + 0.5 * [4, -2] = [3, -1.5], over 1 - 0.25
    assert torch.allclose(torch.stack([alpha_r, alpha_f]), torch.tensor([3.0, -1.5]) / 0.75)


def test_non_finite_logits_leave_the_anchors_as_they_were():
    anchors = LeCamAnchors(0.9, torch.device("cpu"))
    anchors.accumulate(torch.tensor([1.0]), torch.tensor([-1.0]))
    anchors.update()
    before = anchors.ema.clone()
    anchors.accumulate(torch.tensor([float("nan")]), torch.tensor([float("inf")]))
    anchors.update()
    assert torch.equal(anchors.ema, before)


def test_state_round_trip_is_exact():
    torch.manual_seed(0)
    a = LeCamAnchors(0.99, torch.device("cpu"))
    for _ in range(3):
        a.accumulate(torch.randn(4), torch.randn(4))
        a.update()
    b = LeCamAnchors(0.99, torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    assert b.steps == 3 and torch.equal(b.ema, a.ema)
    assert all(torch.equal(x, y) for x, y in zip(a.anchors(), b.anchors(), strict=True))


class LinearD(torch.nn.Module):
    """A D whose logits are known: the mean pixel times a weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return img.mean(dim=[1, 2, 3]) * self.weight


def test_dmain_adds_the_weighted_penalty_to_ds_loss():
    G = tiny_generator(res=8, channels=1)
    D = LinearD()
    loss = StyleGAN2Loss(G, D, None, r1_gamma=0, style_mixing=0, lecam_weight=0.3, lecam_decay=0.9)
    torch.manual_seed(0)
    reals, z = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 8)
    loss.accumulate_gradients("Dmain", reals, None, z, None, gain=1.0)  # first step: anchors only
    assert D.weight.grad is not None and loss.lecam.steps == 0  # the trainer calls update after the phase
    loss.lecam.update()
    alpha_r, alpha_f = loss.lecam.anchors()
    D.weight.grad = None
    torch.manual_seed(1)
    stats = loss.accumulate_gradients("Dmain", reals, None, z, None, gain=1.0)
    # The same loss by hand, on the same fakes (the same seed draws the same noise inputs).
    torch.manual_seed(1)
    with torch.no_grad():
        fakes, _ = loss.run_G(z, None, update_w_avg=False)
    w = D.weight.detach().clone().requires_grad_()
    real_logits, gen_logits = reals.mean(dim=[1, 2, 3]) * w, fakes.mean(dim=[1, 2, 3]) * w
    penalty = lecam_real_term(real_logits, alpha_f).mean() + lecam_gen_term(gen_logits, alpha_r).mean()
    total = d_loss_real(real_logits).mean() + d_loss_gen(gen_logits).mean() + 0.3 * penalty
    (expected,) = torch.autograd.grad(total, w)
    assert torch.isclose(D.weight.grad, expected, rtol=1e-5)
    assert torch.isclose(stats["loss_D_lecam"], 0.3 * penalty.detach(), rtol=1e-5)
    assert penalty > 0
