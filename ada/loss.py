"""StyleGAN2's losses: the non-saturating logistic GAN loss, lazy R1 and path-length regularisation.

The loss terms are small pure functions; `StyleGAN2Loss` runs G and D (with the
augmentation pipe in front of D) for one training phase and backpropagates.

Augmentation wraps D, not the data: every image D sees, real or generated, goes through
`augment_pipe`. R1 penalises the gradient of D(augment(x)) with respect to the real x,
back through the pipe, as the official stylegan2-ada-pytorch does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
        self.pl_mean = torch.zeros([], device=next(G.parameters()).device)

    def run_G(self, z: torch.Tensor, c: torch.Tensor | None, main: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        ws = self.G.mapping(z, c)
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
            if phase == "Dmain":
                with torch.no_grad():
                    gen_img, _ = self.run_G(gen_z, gen_c, main=True)
                gen_logits = self.run_D(gen_img, gen_c, main=True)
                loss_gen = d_loss_gen(gen_logits)
                loss_gen.mean().mul(gain).backward()
            do_r1 = phase == "Dreg"
            real = real_img.detach().requires_grad_(do_r1)
            real_logits = self.run_D(real, real_c, main=not do_r1)
            stats["real_signs"] = real_logits.detach().sign()
            total = real_logits * 0
            if phase == "Dmain":
                loss_real = d_loss_real(real_logits)
                stats["loss_D"] = (loss_real.detach() + loss_gen.detach()).mean()
                total = total + loss_real
            if do_r1:
                penalty = r1_penalty(real_logits, real) * (self.r1_gamma / 2)
                stats["loss_D_r1"] = penalty.detach().mean()
                total = total + penalty
            total.mean().mul(gain).backward()
        else:
            raise ValueError(f"unknown phase {phase!r}")
        return stats
