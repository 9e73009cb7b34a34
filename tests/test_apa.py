"""APA, adaptive pseudo augmentation (Jiang et al. 2021), in the loss: which reals are replaced, by what,
and what D's phases and the overfitting heuristic then see."""

from __future__ import annotations

import pytest
import torch

from ada.controller import AdaController
from ada.loss import StyleGAN2Loss
from tests._tiny import tiny_generator

N, RES = 8, 8


class LabelG(torch.nn.Module):
    """A stand-in G whose images are filled with -1 - the index of their label (-1 unconditional)."""

    z_dim, num_ws, c_dim = 4, 2, 3

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros([]))  # the loss reads G's device from a parameter
        self.calls: list[int] = []

    def mapping(self, z, c, update_w_avg=True):
        label = torch.zeros(len(z)) if c is None else c.argmax(dim=1).float()
        return label[:, None, None].expand(len(z), self.num_ws, 1)

    def synthesis(self, ws):
        self.calls.append(len(ws))
        return (-1 - ws[:, 0, 0]).reshape(-1, 1, 1, 1).expand(len(ws), 1, RES, RES).clone()


class MeanD(torch.nn.Module):
    """Logit = the mean pixel: +1 on the all-ones reals below, negative on LabelG's images."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones([]))

    def forward(self, img, c):
        return img.mean(dim=[1, 2, 3]) * self.weight


def loss_with(G, p: float) -> StyleGAN2Loss:
    loss = StyleGAN2Loss(G, MeanD(), None, r1_gamma=1.0, style_mixing=0)
    loss.apa_p = p
    return loss


def test_no_replacement_at_p_zero_and_all_at_p_one():
    G = LabelG()
    reals = torch.ones(N, 1, RES, RES)
    assert loss_with(G, 0.0).pseudo_augment(reals, None) is reals
    out = loss_with(G, 1.0).pseudo_augment(reals, None)
    assert torch.equal(out, torch.full_like(reals, -1.0)) and G.calls == [N]


def test_each_real_is_replaced_independently_with_probability_p():
    G = LabelG()
    torch.manual_seed(0)
    reals = torch.ones(4000, 1, RES, RES)
    out = loss_with(G, 0.3).pseudo_augment(reals, None)
    replaced = (out[:, 0, 0, 0] < 0).float()
    assert abs(replaced.mean() - 0.3) < 0.025
    assert G.calls == [int(replaced.sum())]  # only the replaced images are generated


def test_pseudo_reals_carry_the_real_labels():
    G = LabelG()
    labels = torch.nn.functional.one_hot(torch.arange(N) % 3, 3).float()
    out = loss_with(G, 1.0).pseudo_augment(torch.ones(N, 1, RES, RES), labels)
    assert torch.equal(out[:, 0, 0, 0], -1 - labels.argmax(dim=1).float())


def test_pseudo_reals_are_g_images_for_fresh_latents_and_leave_w_avg_alone():
    G = tiny_generator(res=RES, channels=1).train()
    w_avg = G.mapping.w_avg.clone()
    loss = StyleGAN2Loss(G, MeanD(), None, r1_gamma=1.0, style_mixing=0)
    loss.apa_p = 1.0
    reals = torch.ones(N, 1, RES, RES)
    torch.manual_seed(5)
    out = loss.pseudo_augment(reals, None)
    assert torch.equal(G.mapping.w_avg, w_avg)
    torch.manual_seed(5)
    torch.rand([N])  # the draw that picks the images to replace
    with torch.no_grad():
        expected = G(torch.randn([N, G.z_dim]), None)
    assert torch.equal(out, expected)
    assert not out.requires_grad  # detached: D's loss sends nothing back into G


@pytest.mark.parametrize("phase", ["Dmain", "Dreg"])
def test_both_d_phases_see_pseudo_reals_and_their_signs_are_measured(phase):
    """As in the authors' code: R1 runs on the batch as replaced, and r_t counts its signs."""
    reals = torch.ones(N, 1, RES, RES)
    z = torch.randn(N, 4)
    for p, sign in ((0.0, 1.0), (1.0, -1.0)):
        stats = loss_with(LabelG(), p).accumulate_gradients(phase, reals, None, z, None, gain=1.0)
        assert torch.equal(stats["real_signs"], torch.full([N], sign))


def test_a_second_controller_moves_p_apa_by_adas_law():
    """D calls every real real (r_t = 1 > target): p_apa rises by batch * interval / (kimg * 1000)."""
    apa = AdaController(target=0.6, interval=4, ada_kimg=1.0)
    for batch_idx in range(1, 9):
        apa.accumulate(torch.ones(16))
        apa.step(batch_idx, 16)
    assert apa.p == pytest.approx(2 * 16 * 4 / 1000)
