"""StyleGAN2's losses: the non-saturating logistic GAN loss, lazy R1 and path-length regularisation.

The loss terms are small pure functions; `StyleGAN2Loss` runs G and D (with the
augmentation pipe in front of D) for one training phase and backpropagates.

Augmentation wraps D, not the data: every image D sees, real or generated, goes through
`augment_pipe`. R1 penalises the gradient of D(augment(x)) with respect to the real x,
back through the pipe, as the official stylegan2-ada-pytorch does.

Two options against D overfitting a small training set act here too: the LeCam penalty on D's
logits (`ada.lecam`), and APA, adaptive pseudo augmentation (Jiang, Dai, Wu and Loy, "Deceive D:
Adaptive Pseudo Augmentation for GAN Training with Limited Data", NeurIPS 2021): with probability
`apa_p` each real image of a D phase is replaced by a generated one, detached, which D is then
trained to call real. As in the authors' code (EndlessSora/DeceiveD, training/loss.py), the
replacement happens before the augmentation pipe, in the R1 phase as well as the main one (R1 then
penalises D's gradient at those pseudo reals too), and D's signs on the batch as replaced are what
the overfitting heuristic measures. The trainer retunes `apa_p` with a second ADA controller.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ada.lecam import DEFAULT_DECAY, LeCamAnchors, lecam_gen_term, lecam_real_term


def g_loss(gen_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: -log sigmoid(D(G(z))), per sample."""
    return F.softplus(-gen_logits)


def d_loss_real(real_logits: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(D(x)), per sample."""
    return F.softplus(-real_logits)


def d_loss_gen(gen_logits: torch.Tensor) -> torch.Tensor:
    """-log(1 - sigmoid(D(G(z)))), per sample."""
    return F.softplus(gen_logits)


def r1_penalty(real_logits: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """||grad_x D(x)||^2 per sample, differentiable (for the R1 regulariser)."""
    (grads,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True, only_inputs=True)
    return grads.square().sum(dim=[1, 2, 3])


def path_lengths(gen_img: torch.Tensor, gen_ws: torch.Tensor, pl_noise: torch.Tensor) -> torch.Tensor:
    """||J_w^T y|| per sample, y a random image scaled so the length is resolution independent."""
    (grads,) = torch.autograd.grad((gen_img * pl_noise).sum(), gen_ws, create_graph=True, only_inputs=True)
    return grads.square().sum(dim=2).mean(dim=1).sqrt()


def path_length_noise(gen_img: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(gen_img) / math.sqrt(gen_img.shape[2] * gen_img.shape[3])


def style_mixing_cutoff(num_ws: int, prob: float) -> int:
    """Where the second latent takes over: uniform in 1..num_ws-1 with probability `prob`, else never."""
    if prob <= 0 or torch.rand([]).item() >= prob:
        return num_ws
    return int(torch.randint(1, num_ws, []).item())


def compiled(module: nn.Module) -> nn.Module:
    """torch.compile(module), drawing random numbers as eager PyTorch does.

    Inductor's own random kernels would give the noise inputs other values than an eager run
    with the same seed; with eager randomness a compiled run follows the eager one within float
    tolerance. (A process-wide inductor setting: it only ever makes compiled code match eager.)
    """
    import torch._inductor.config

    torch._inductor.config.fallback_random = True
    return torch.compile(module)


class StyleGAN2Loss:
    """Runs one phase ('Gmain', 'Greg', 'Dmain', 'Dreg') and accumulates its gradients.

    `gain` multiplies the loss: lazy regularisation runs every k steps with k times the weight, and
    the trainer folds the float16 loss scale into it.
    Returns the detached per-phase statistics the loop logs.

    `lecam_weight` > 0 adds the LeCam penalty to Dmain; its anchors (`lecam`) move once per D step,
    when the trainer calls `lecam.update` after the phase. `apa_p` is APA's probability, set by the
    trainer before each step.
    """

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        augment_pipe: nn.Module | None,
        r1_gamma: float,
        pl_weight: float = 2.0,
        pl_decay: float = 0.01,
        pl_batch_shrink: int = 2,
        style_mixing: float = 0.9,
        compile: bool = False,
        lecam_weight: float = 0.0,
        lecam_decay: float = DEFAULT_DECAY,
    ):
        self.G = G
        self.D = D
        # Gmain and Dmain may run compiled graphs of the same modules (same weights); R1 and the path
        # length need double backward, which compiled graphs do not support, so those phases stay eager.
        self.synthesis_main = compiled(G.synthesis) if compile else G.synthesis
        self.D_main = compiled(D) if compile else D
        self.augment_pipe = augment_pipe
        self.r1_gamma = r1_gamma
        self.pl_weight = pl_weight
        self.pl_decay = pl_decay
        self.pl_batch_shrink = pl_batch_shrink
        self.style_mixing = style_mixing
        device = next(G.parameters()).device
        self.pl_mean = torch.zeros([], device=device)
        self.lecam_weight = lecam_weight
        self.lecam = LeCamAnchors(lecam_decay, device) if lecam_weight > 0 else None
        self.apa_p = 0.0

    def run_G(
        self, z: torch.Tensor, c: torch.Tensor | None, main: bool = False, update_w_avg: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.G.mapping(z, c, update_w_avg=update_w_avg)
        cutoff = style_mixing_cutoff(ws.shape[1], self.style_mixing)
        if cutoff < ws.shape[1]:
            mixed = self.G.mapping(torch.randn_like(z), c, update_w_avg=False)
            ws = torch.cat([ws[:, :cutoff], mixed[:, cutoff:]], dim=1)
        synthesis = self.synthesis_main if main else self.G.synthesis
        return synthesis(ws), ws

    def run_D(self, img: torch.Tensor, c: torch.Tensor | None, main: bool = False) -> torch.Tensor:
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return (self.D_main if main else self.D)(img, c)

    @torch.no_grad()
    def pseudo_augment(self, real_img: torch.Tensor, real_c: torch.Tensor | None) -> torch.Tensor:
        """APA: each real replaced, with probability `apa_p`, by G's image for a fresh latent and the
        real's own label.

        The authors' code takes the images of the preceding Gmain phase; fresh latents give images of
        the same distribution without tying this phase to that one (and keep a conditional D's pairs
        consistent). Only the replaced images are generated; they leave G's tracked w_avg alone, so
        the mapping statistics are those of a run without APA.
        """
        index = (torch.rand([real_img.shape[0]], device=real_img.device) < self.apa_p).nonzero().squeeze(1)
        if index.numel() == 0:
            return real_img
        z = torch.randn([index.numel(), self.G.z_dim], device=real_img.device)
        c = None if real_c is None else real_c.index_select(0, index)
        fakes, _ = self.run_G(z, c, update_w_avg=False)
        return real_img.index_copy(0, index, fakes.to(real_img.dtype))

    def accumulate_gradients(
        self,
        phase: str,
        real_img: torch.Tensor,
        real_c: torch.Tensor | None,
        gen_z: torch.Tensor,
        gen_c: torch.Tensor | None,
        gain: float | torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        stats: dict[str, torch.Tensor] = {}
        if phase == "Gmain":
            gen_img, _ = self.run_G(gen_z, gen_c, main=True)
            loss = g_loss(self.run_D(gen_img, gen_c, main=True))
            stats["loss_G"] = loss.detach().mean()
            loss.mean().mul(gain).backward()
        elif phase == "Greg":
            n = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
            gen_img, gen_ws = self.run_G(gen_z[:n], None if gen_c is None else gen_c[:n])
            lengths = path_lengths(gen_img, gen_ws, path_length_noise(gen_img))
            pl_mean = self.pl_mean.lerp(lengths.mean(), self.pl_decay)
            # A non-finite step is skipped by the trainer; it must not poison the running mean for good.
            self.pl_mean.copy_(torch.where(torch.isfinite(pl_mean), pl_mean.detach(), self.pl_mean))
            penalty = (lengths - pl_mean).square() * self.pl_weight
            stats["loss_G_pl"] = penalty.detach().mean()
            # The zero-weighted image term keeps every synthesis parameter in the graph.
            (gen_img[:, 0, 0, 0] * 0 + penalty).mean().mul(gain).backward()
        elif phase in ("Dmain", "Dreg"):
            anchors = self.lecam.anchors() if self.lecam is not None and phase == "Dmain" else None
            if phase == "Dmain":
                with torch.no_grad():
                    gen_img, _ = self.run_G(gen_z, gen_c, main=True)
                gen_logits = self.run_D(gen_img, gen_c, main=True)
                loss_gen = d_loss_gen(gen_logits)
                total_gen = loss_gen
                if anchors is not None:
                    lecam_gen = lecam_gen_term(gen_logits, anchors[0]) * self.lecam_weight
                    total_gen = total_gen + lecam_gen
                total_gen.mean().mul(gain).backward()
            do_r1 = phase == "Dreg"
            real = self.pseudo_augment(real_img, real_c) if self.apa_p > 0 else real_img
            real = real.detach().requires_grad_(do_r1)
            real_logits = self.run_D(real, real_c, main=not do_r1)
            stats["real_signs"] = real_logits.detach().sign()
            total = real_logits * 0
            if phase == "Dmain":
                loss_real = d_loss_real(real_logits)
                stats["loss_D"] = (loss_real.detach() + loss_gen.detach()).mean()
                total = total + loss_real
                if anchors is not None:
                    lecam_real = lecam_real_term(real_logits, anchors[1]) * self.lecam_weight
                    stats["loss_D_lecam"] = lecam_real.detach().mean() + lecam_gen.detach().mean()
                    total = total + lecam_real
                if self.lecam is not None:
                    self.lecam.accumulate(real_logits, gen_logits)
            if do_r1:
                penalty = r1_penalty(real_logits, real) * (self.r1_gamma / 2)
                stats["loss_D_r1"] = penalty.detach().mean()
                total = total + penalty
            total.mean().mul(gain).backward()
        else:
            raise ValueError(f"unknown phase {phase!r}")
        return stats
