"""The ADA controller: overfitting heuristics and the p update.

D's raw logits tell how much it overfits:
  r_t = E[sign(D(x_train))]
  r_v = (E[D(x_train)] - E[D(x_val)]) / (E[D(x_train)] - E[D(G(z))])
0 means no overfitting, 1 complete overfitting. Every `ada_interval` minibatches the
controller moves p by a fixed step towards the side that brings the heuristic back to its
target, so p can cross [0, 1] in `ada_kimg` thousand images whatever the batch size.
"""

from __future__ import annotations

import math

import torch

# Above this p, the standard transforms start to leak into G's outputs.
LEAK_THRESHOLD = 0.8
# Thousands of images for p to move by 1: the default, and the faster reaction of transfer runs.
ADA_KIMG = 500.0
ADA_KIMG_TRANSFER = 100.0


def r_t(sign_sum: float, count: float) -> float:
    """Mean sign of D's logits on training reals."""
    return sign_sum / count


def r_v(logit_train: float, logit_val: float, logit_gen: float) -> float:
    """Validation heuristic: where D's mean logit on withheld reals lies between training reals and fakes."""
    denom = logit_train - logit_gen
    if denom == 0:
        return 0.0
    return (logit_train - logit_val) / denom


def p_update(p: float, heuristic: float, target: float, batch: int, interval: int, ada_kimg: float,
             p_max: float = 1.0) -> float:
    """One controller step: p += sign(heuristic - target) * batch * interval / (ada_kimg * 1000), clipped."""
    step = batch * interval / (ada_kimg * 1000)
    delta = math.copysign(step, heuristic - target) if heuristic != target else 0.0
    return min(max(p + delta, 0.0), p_max)


def _reduced(total: float, count: float, reduce=None) -> tuple[float, float]:
    """(sum, count) of the signs over all ranks when `reduce` sums across processes."""
    sums = torch.tensor([total, count], dtype=torch.float64)
    if reduce is not None:
        sums = reduce(sums)
    total, count = sums.tolist()
    return total, count


class AdaController:
    """Collects sign(D(x_train)) and retunes p; its whole state goes into checkpoints.

    With `heuristic='rv'`, p follows r_v (measured once per tick by the trainer) instead of r_t.
    `reduce` sums the collected statistics across processes so every rank computes the same p.
    """

    def __init__(
        self,
        target: float = 0.6,
        interval: int = 4,
        ada_kimg: float = ADA_KIMG,
        p: float = 0.0,
        p_max: float = 1.0,
        heuristic: str = "rt",
        adjust: bool = True,
        start_kimg: float = 0.0,
    ):
        self.target = target
        self.interval = interval
        self.ada_kimg = ada_kimg
        self.p = p
        self.p_max = p_max
        self.heuristic = heuristic
        self.adjust = adjust
        self.start_kimg = start_kimg
        self.sign_sum = 0.0
        self.sign_count = 0.0
        self.last_r_t: float | None = None
        self.last_r_v: float | None = None
        self.tick_sign_sum = 0.0
        self.tick_sign_count = 0.0
        self.warned_leak = False
        # [sum, count] of the signs not yet read to the host, on the device of the logits.
        self._pending: torch.Tensor | None = None

    def accumulate(self, real_signs: torch.Tensor) -> None:
        """Add one batch of sign(D(x_train)). Stays on the device: the host reads it in `step`."""
        # A NaN logit has no sign; counting it would move p at random.
        finite = torch.isfinite(real_signs)
        sums = torch.stack([torch.where(finite, real_signs, 0).sum().double(), finite.sum().double()])
        self._pending = sums if self._pending is None else self._pending + sums

    def _collect(self) -> None:
        """Move the device-side sums into the host counters: a host sync, once per `interval` minibatches."""
        if self._pending is None:
            return
        total, count = self._pending.tolist()
        self._pending = None
        self.sign_sum += total
        self.sign_count += count
        self.tick_sign_sum += total
        self.tick_sign_count += count

    def step(self, batch_idx: int, batch: int, reduce=None, nimg: int | None = None) -> bool:
        """Call after every minibatch; updates p every `interval` batches. Returns whether it ran.

        Before `start_kimg` thousand images (`nimg`) r_t is measured but p stays where it is.
        """
        if batch_idx % self.interval != 0:
            return False
        self._collect()
        # Reduced before the check: every rank must join the collective, even one that saw only NaN logits.
        total, count = _reduced(self.sign_sum, self.sign_count, reduce)
        if count == 0:
            return False
        self.sign_sum = self.sign_count = 0.0
        self.last_r_t = r_t(total, count)
        if self.adjust and (nimg is None or nimg >= self.start_kimg * 1000):
            value = self.last_r_t if self.heuristic == "rt" else self.last_r_v
            if value is not None:
                self.p = p_update(self.p, value, self.target, batch, self.interval, self.ada_kimg, self.p_max)
        return True

    def leak_warning(self) -> str | None:
        """A message the first time p passes the leak threshold, else None."""
        if self.p <= LEAK_THRESHOLD or self.warned_leak:
            return None
        self.warned_leak = True
        return (
            f"augmentation probability p={self.p:.3f} passed {LEAK_THRESHOLD}: augmentations may start to leak "
            "into generated images; consider --p-max, a lower --target, or more data"
        )

    def tick_r_t(self, reduce=None) -> float | None:
        """r_t over every real D saw in this tick (all ranks with `reduce`), then start a new tick."""
        self._collect()
        total, count = _reduced(self.tick_sign_sum, self.tick_sign_count, reduce)
        self.tick_sign_sum = self.tick_sign_count = 0.0
        return None if count == 0 else r_t(total, count)

    def state_dict(self) -> dict:
        self._collect()
        return {
            "p": self.p, "sign_sum": self.sign_sum, "sign_count": self.sign_count,
            "last_r_t": self.last_r_t, "last_r_v": self.last_r_v, "warned_leak": self.warned_leak,
        }

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.sign_sum = float(state["sign_sum"])
        self.sign_count = float(state["sign_count"])
        self.last_r_t = state.get("last_r_t")
        self.last_r_v = state.get("last_r_v")
        self.warned_leak = bool(state.get("warned_leak", False))
