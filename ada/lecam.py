"""LeCam regularisation of D: its outputs on reals are held near its recent outputs on fakes, and vice versa.

Tseng, Jiang, Liu, Yang and Yang, "Regularizing Generative Adversarial Networks under Limited Data",
CVPR 2021, Eq. 3:

    R_LC = E_x[ ||D(x) - alpha_F||^2 ] + E_z[ ||D(G(z)) - alpha_R||^2 ]

with alpha_R and alpha_F exponential moving averages of D's mean raw logit on real and on generated
images; D's loss becomes L_D + lambda R_LC (`--lecam lambda`). The paper shows that with it the
GAN minimises a weighted LeCam divergence, which stays meaningful when D would otherwise
separate a small training set perfectly.

Which form. The authors' released code (google/lecam-gan: `lecam_reg` in biggan_cifar/losses.py
and `lecamreg` in stylegan2/lecam_loss.py), which produced the paper's numbers, and StudioGAN's
port clip each term at zero:

    R_LC = E_x[ relu(D(x) - alpha_F)^2 ] + E_z[ relu(alpha_R - D(G(z)))^2 ]

This is the form here. Where D ranks as it normally does (a real above the fakes' average, a fake
below the reals' average) it equals Eq. 3 term for term; it drops only the pull on a real that D
already scores below the fakes' average (or a fake above the reals' average), which would move D
towards being more right, not restrain it.

The anchors. Decay 0.99 per D step (the authors' StyleGAN2 code; their BigGAN code uses 0.9),
starting at 0 and debiased like Adam's moments, as their StyleGAN2 code does (zero_debias):
after t updates, alpha = ema_t / (1 - decay^t), so the first anchor is the first batch's mean
rather than something pulled towards 0. One change of timing: the authors fold the current
batch's mean into the anchors before computing the penalty; here the penalty uses the anchors of
the steps before and the batch updates them afterwards, so that D's two passes (fakes, then
reals) need not be held in memory together. At decay 0.99 the current batch is 1% of an anchor.
The very first D step has no anchors yet and no penalty.

Weights published for StyleGAN2: 3e-7 (FFHQ, 1k images, paper256) and 1e-6 (CIFAR-10, 10%) in the
authors' scripts (stylegan2/scripts/run_train_*.sh); StudioGAN's StyleGAN2 CIFAR-10 config uses
0.3, as does the authors' BigGAN on CIFAR.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_DECAY = 0.99


def lecam_real_term(real_logits: Tensor, anchor_fake: Tensor) -> Tensor:
    """relu(D(x) - alpha_F)^2 per sample: a real's logit held near the fakes' average."""
    return F.relu(real_logits - anchor_fake).square()


def lecam_gen_term(gen_logits: Tensor, anchor_real: Tensor) -> Tensor:
    """relu(alpha_R - D(G(z)))^2 per sample: a fake's logit held near the reals' average."""
    return F.relu(anchor_real - gen_logits).square()


def ema_update(ema: Tensor, value: Tensor, decay: float) -> Tensor:
    """decay * ema + (1 - decay) * value."""
    return ema * decay + value * (1 - decay)


def debiased(ema: Tensor, steps: int, decay: float) -> Tensor:
    """The average of the values seen so far, from an EMA that started at 0: ema / (1 - decay^steps)."""
    return ema / (1 - decay**steps)


class LeCamAnchors:
    """alpha_R and alpha_F, kept on the device (nothing here makes the host wait for it).

    Every round of a D step adds its logits with `accumulate`; `update` then moves the anchors
    once per step with the mean over all rounds and, with `reduce` summing across processes, over
    all ranks, so the anchors do not depend on how the batch is split.
    """

    def __init__(self, decay: float, device: torch.device) -> None:
        self.decay = decay
        self.ema = torch.zeros(2, device=device)  # [real, fake], not yet debiased
        self.steps = 0
        # Sums of the logits not yet folded in: [sum real, count real, sum fake, count fake].
        self._pending = torch.zeros(4, device=device)

    def accumulate(self, real_logits: Tensor, gen_logits: Tensor) -> None:
        real, gen = real_logits.detach().float(), gen_logits.detach().float()
        # new_full fills on the device: no host-to-device copy.
        self._pending += torch.stack([real.sum(), real.new_full((), real.numel()), gen.sum(),
                                      gen.new_full((), gen.numel())])

    def update(self, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        sums = self._pending if reduce is None else reduce(self._pending)
        self._pending = torch.zeros_like(self._pending)
        means = torch.stack([sums[0] / sums[1], sums[2] / sums[3]])
        new = ema_update(self.ema, means, self.decay)
        # A non-finite logit (a step the trainer skips) must not poison the anchors for good.
        self.ema = torch.where(torch.isfinite(new), new, self.ema)
        self.steps += 1

    def anchors(self) -> tuple[Tensor, Tensor] | None:
        """(alpha_R, alpha_F) as 0-d tensors, or None before the first update."""
        if self.steps == 0:
            return None
        alpha = debiased(self.ema, self.steps, self.decay)
        return alpha[0], alpha[1]

    def state_dict(self) -> dict:
        return {"ema": self.ema.detach().cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"].to(self.ema.device, self.ema.dtype).clone()
        self.steps = int(state["steps"])
