"""Dynamic loss scaling, and the skip of steps whose gradients are not finite, without host syncs.

float16 gradients of a small loss underflow to zero. Multiplying the loss by a large `scale`
before backward keeps them representable; the optimiser divides it out again. When the scaled
gradients overflow (inf/NaN), the step is skipped and the scale halves; after `growth_interval`
good steps in a row it doubles, so it stays near the largest value that does not overflow.

Without float16 the scale stays 1 and only the skip remains: a non-finite step (a NaN loss,
a diverging run) never reaches the weights.

Every quantity lives on the training device and every update is a device operation, so a
phase never waits for the GPU. The optimiser must be a fused `torch.optim.Adam`, which reads
`grad_scale` and `found_inf` on the device and leaves weights and moments untouched when
`found_inf` is 1. The host reads the counters only in `take_counts`, every few steps.
"""

from __future__ import annotations

import torch

# Modest, so that the first steps do not all overflow: R1 and path-length gradients, lazily
# weighted by 16 and 4, overflow float16 from about 2^13 in the CPU-sized test configuration.
INIT_SCALE = 2.0**10
# Good steps in a row before the scale doubles again.
GROWTH_INTERVAL = 1000


def found_non_finite(grads: list[torch.Tensor]) -> torch.Tensor:
    """1.0 if any gradient holds inf or NaN, else 0.0, as a device tensor (no sync).

    The total norm is non-finite exactly when some element is, or when the squares overflow
    float32 (elements above ~1e19), which is divergence all the same.
    """
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=None)
    return (~torch.isfinite(total)).float()


def next_scale(
    scale: torch.Tensor, good_steps: torch.Tensor, found_inf: torch.Tensor, growth_interval: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale after one step: halved on overflow, doubled after `growth_interval` good steps in a row.

    Returns (scale, good_steps), both device tensors.
    """
    good_steps = (good_steps + 1) * (1 - found_inf)
    grow = (good_steps >= growth_interval).float()
    scale = scale * torch.where(found_inf > 0, 0.5, 1.0 + grow)
    return scale, good_steps * (1 - grow)


class LossScaler:
    """Loss scale and bad-step counters of one training phase.

    `enabled=False` (no float16 anywhere) keeps the scale at exactly 1: results are bit-identical
    to unscaled training.
    """

    def __init__(self, device: torch.device, enabled: bool, init_scale: float = INIT_SCALE,
                 growth_interval: int = GROWTH_INTERVAL):
        self.enabled = enabled
        self.growth_interval = growth_interval
        self.scale = torch.tensor(init_scale if enabled else 1.0, device=device)
        self.good_steps = torch.zeros([], device=device)
        # Non-finite steps in a row now, the longest such run since the last look, and how many were skipped.
        self.streak = torch.zeros([], device=device)
        self.max_streak = torch.zeros([], device=device)
        self.skipped = torch.zeros([], device=device)

    def scaled(self, value: torch.Tensor | float) -> torch.Tensor | float:
        """`value` times the current scale: a loss before backward, or the gain the loss is multiplied by."""
        return value * self.scale if self.enabled else value

    def step(self, opt: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
        """Adam step that divides out the scale and is skipped when `grads` are not all finite."""
        found_inf = found_non_finite(grads)
        opt.grad_scale = self.scale if self.enabled else None
        opt.found_inf = found_inf
        opt.step()
        self.streak = (self.streak + 1) * found_inf
        self.max_streak = torch.maximum(self.max_streak, self.streak)
        self.skipped = self.skipped + found_inf
        if self.enabled:
            self.scale, self.good_steps = next_scale(self.scale, self.good_steps, found_inf, self.growth_interval)

    def take_counts(self) -> tuple[int, int, int]:
        """(current streak, longest streak, skipped steps) since the last call, read on the host: a sync."""
        counts = torch.stack([self.streak, self.max_streak, self.skipped]).tolist()
        streak, max_streak, skipped = (int(v) for v in counts)
        self.max_streak = self.streak.clone()
        self.skipped = torch.zeros_like(self.skipped)
        return streak, max_streak, skipped

    def state_dict(self) -> dict[str, float]:
        return {"enabled": float(self.enabled), "scale": float(self.scale), "good_steps": float(self.good_steps),
                "streak": float(self.streak)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        # Only a float16 run's scale carries over: a float32 or bf16 run (scale 1) resumed in float16
        # starts from INIT_SCALE instead of climbing from 1 for thousands of steps.
        if self.enabled and state.get("enabled"):
            self.scale.fill_(state["scale"])
            self.good_steps.fill_(state["good_steps"])
        self.streak.fill_(state["streak"])
        self.max_streak.fill_(state["streak"])
