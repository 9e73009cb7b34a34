"""TensorBoard event files in the run directory, under the names the official training loop uses.

`tensorboard --logdir runs` then shows every run side by side. What is written:

- every tick record, each numeric key under its official name where the official code logs the
  same quantity (`Loss/G/loss`, `Progress/augment`, `Timing/sec_per_kimg`, ...; see TICK_NAMES)
  and under `ADA/<key>` or `Stats/<key>` otherwise;
- every metric result as `Metrics/<key>` (`Metrics/fid50k_full`);
- the sample grids (reals, fakes_init, fakesNNNNNN) as `Images/<key>`.

The step of every point is the whole kimg reached (real images shown // 1000), as the official
training loop steps (`global_step = int(cur_nimg / 1e3)`), so that our runs and official ones line
up in one TensorBoard. Ticks shorter than 1 kimg share a step, and TensorBoard keeps the last point
of a step (a point preempts those at its step and later, as after a resume); stats.jsonl has them
all. The wall time of a point is the tick's timestamp (the official code writes seconds since the
start instead; TensorBoard's "Relative" axis shows both alike).

Like wandb, TensorBoard must never stop training: the first failure gives one TrackingWarning and
the tracker turns itself off.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ada.tracking import MAX_IMAGE_SIDE, Tracker, describe_error, numeric_items, warn_tracking

# Tick record key -> the official tag of the same quantity.
TICK_NAMES = {
    "tick": "Progress/tick",
    "kimg": "Progress/kimg",
    "p": "Progress/augment",
    "sec_per_tick": "Timing/sec_per_tick",
    "sec_per_kimg": "Timing/sec_per_kimg",
    "mem_cpu_gb": "Resources/cpu_mem_gb",
    "mem_gpu_gb": "Resources/peak_gpu_mem_gb",
    "loss_G": "Loss/G/loss",
    "loss_D": "Loss/D/loss",
    # Our regularisation stats are the weighted penalties (ada.loss: the path length penalty times
    # pl_weight, R1 times gamma / 2), the official Loss/G/reg and Loss/D/reg; the official
    # Loss/pl_penalty and Loss/r1_penalty are the unweighted ones, which we do not record.
    "loss_G_pl": "Loss/G/reg",
    "loss_D_r1": "Loss/D/reg",
    # The official code reports the sign of D's logits on reals each step; r_t is their mean over the tick.
    "r_t": "Loss/signs/real",
}
# Ours, without an official counterpart: the overfitting monitor.
_ADA_KEYS = ("r_v", "logit_train", "logit_val", "logit_gen")


def available() -> bool:
    """Whether the tensorboard package (which torch's SummaryWriter needs) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def tag_of(key: str) -> str:
    if key in TICK_NAMES:
        return TICK_NAMES[key]
    return f"ADA/{key}" if key in _ADA_KEYS else f"Stats/{key}"


def step_of(kimg: float) -> int:
    """The official step: whole kimg, rounded down (from the exact image count, not the float kimg)."""
    return round(kimg * 1000) // 1000


def grid_image(path: Path) -> np.ndarray:
    """A sample grid PNG as uint8 HWC with 3 channels, at most MAX_IMAGE_SIDE on its longer side."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(image)


class TensorBoardTracker(Tracker):
    """Writes the run's event files with torch's SummaryWriter. Made by `create`."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return self._writer is not None

    @staticmethod
    def create(run_dir: Path, enabled: bool | None, rank: int = 0) -> Tracker:
        """On rank 0 when `enabled` (None: when tensorboard is installed); else a no-op tracker."""
        if rank != 0 or enabled is False or (enabled is None and not available()):
            return Tracker()
        try:
            from torch.utils.tensorboard import SummaryWriter

            return TensorBoardTracker(SummaryWriter(log_dir=str(run_dir)))
        except Exception as exc:
            warn_tracking(
                f"TensorBoard could not start ({describe_error(exc)}); no event files for this run, training goes on"
            )
            return Tracker()

    def _guard(self, what: str, call: Callable[[Any], None]) -> None:
        writer = self._writer
        if writer is None:
            return
        try:
            call(writer)
        except Exception as exc:
            self._writer = None
            warn_tracking(f"TensorBoard {what} failed ({describe_error(exc)}); no more event files, training goes on")

    def log_tick(self, stats: Mapping[str, Any]) -> None:
        values = numeric_items(stats)
        if "kimg" not in values:
            return
        step = step_of(values["kimg"])
        walltime = values.pop("timestamp", None)

        def write(writer: Any) -> None:
            for key, value in values.items():
                writer.add_scalar(tag_of(key), value, global_step=step, walltime=walltime)
            writer.flush()  # a tick is minutes apart: show it now, as the official loop does

        self._guard("write", write)

    def log_metric(self, kimg: float, results: Mapping[str, Any]) -> None:
        def write(writer: Any) -> None:
            for key, value in numeric_items(results).items():
                writer.add_scalar(f"Metrics/{key}", value, global_step=step_of(kimg))
            writer.flush()

        self._guard("write", write)

    def log_image(self, kimg: float, key: str, path: Path) -> None:
        def write(writer: Any) -> None:
            writer.add_image(f"Images/{key}", grid_image(path), global_step=step_of(kimg), dataformats="HWC")
            writer.flush()

        self._guard("image", write)

    def finish(self, exit_code: int = 0) -> None:
        self._guard("close", lambda writer: writer.close())
        self._writer = None
