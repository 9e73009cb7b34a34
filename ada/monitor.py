"""What each tick measures of a run besides its losses: r_v on withheld reals, and the collapse signal."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ada.controller import r_v
from ada.images import to_float_images
from ada.loader import no_validation_reason
from metrics.diversity import diversity_ratio

if TYPE_CHECKING:
    from ada.training import Trainer

# Images per set for the r_v measurement at each tick.
RV_BATCH = 64
# Generated and real images compared by the collapse signal at each tick.
DIVERSITY_SAMPLES = 64
# Below this diversity ratio (generated vs real pixel spread), the samples have collapsed: say so once.
COLLAPSE_THRESHOLD = 0.4
# Measured on the digits: one or two glyphs score 0.24-0.30, a few modes about 0.5, healthy runs 0.9-1.


@torch.no_grad()
def measure_overfitting(trainer: Trainer) -> dict[str, float | None]:
    """Mean raw logits of D on training reals, withheld reals and fakes (through the pipe at the current p),
    and r_v from them, which the controllers record.

    Runs on its own random streams, so how often it runs does not change the training trajectory.
    """
    t, cfg, device, batch = trainer, trainer.cfg, trainer.device, trainer.batch_gpu
    if t.val_set is None:
        t.say(f"{no_validation_reason(len(t.eval_set.names), cfg.val)}: r_v is not measured")
        return {"logit_train": None, "logit_val": None, "logit_gen": None, "r_v": None}
    group = max(min(cfg.model.mbstd_group, batch), 1)
    n = min(RV_BATCH, len(t.val_set.names), len(t.train_set.names))
    n = max(n - n % group, 1)
    gen = torch.Generator().manual_seed(cfg.seed + t.progress.cur_tick)
    val_idx = torch.randperm(len(t.val_set.names), generator=gen)[:n].tolist()
    train_idx = torch.randperm(len(t.train_set.names), generator=gen)[:n].tolist()
    z = torch.randn([n, t.G.z_dim], generator=gen)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed + t.progress.cur_tick)
        sums = {"logit_train": 0.0, "logit_val": 0.0, "logit_gen": 0.0}
        for lo in range(0, n, batch):
            part = slice(lo, min(lo + batch, n))
            tr_img, tr_c = t.train_set.batch(train_idx[part])
            val_img, val_c = t.val_set.batch(val_idx[part])
            conditional = t.G.c_dim > 0
            c = tr_c.to(device) if conditional else None
            c_val = val_c.to(device) if conditional else None
            ws = t.G.mapping(z[part].to(device), c, update_w_avg=False)
            for key, img, labels in (
                ("logit_train", to_float_images(tr_img, device), c),
                ("logit_val", to_float_images(val_img, device), c_val),
                ("logit_gen", t.G.synthesis(ws), c),
            ):
                sums[key] += float(t.loss.run_D(img, labels).sum())
    logits = {k: float(t.dist.all_reduce_mean(torch.tensor([v / n]))) for k, v in sums.items()}
    logits["r_v"] = r_v(logits["logit_train"], logits["logit_val"], logits["logit_gen"])
    t.controller.last_r_v = logits["r_v"]
    if t.apa_controller is not None:
        t.apa_controller.last_r_v = logits["r_v"]
    return logits


class CollapseSignal:
    """The spread of G_ema's samples over the spread of the reals (see metrics.diversity.diversity_ratio),
    for fixed latents (with labels drawn like training's) and fixed reals."""

    def __init__(self, train_set: object, z_dim: int, conditional: bool, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        n = min(DIVERSITY_SAMPLES, len(train_set.names))
        idx = torch.randperm(len(train_set.names), generator=gen)[:n].tolist()
        reals, labels = train_set.batch(idx)
        self.z = torch.randn([n, z_dim], generator=gen)
        self.c = labels if conditional else None
        self.reals = reals.to(torch.float32) / 127.5 - 1

    @torch.no_grad()
    def measure(self, G_ema: torch.nn.Module, device: torch.device, batch: int, warn: Callable[[str], None] | None,
                ) -> float | None:
        """The ratio, passed to `warn` when it drops below COLLAPSE_THRESHOLD (None: no warning)."""
        z, c = self.z, self.c
        if len(z) < 2:
            return None
        fakes = torch.cat([
            G_ema(zb.to(device), None if c is None else cb.to(device), noise_mode="const").cpu()
            for zb, cb in zip(z.split(batch), (c if c is not None else z).split(batch), strict=True)
        ])
        ratio = diversity_ratio(fakes, self.reals)
        if ratio < COLLAPSE_THRESHOLD and warn is not None:
            warn(
                f"the samples have collapsed: their diversity is {ratio:.2f} of the real images' (below "
                f"{COLLAPSE_THRESHOLD}); look at reals_and_fakes.png. A stronger R1 penalty (--gamma) is the usual "
                "cure; on 200 digits --gamma=0.01 collapsed to one glyph where 1 did not"
            )
        return ratio
