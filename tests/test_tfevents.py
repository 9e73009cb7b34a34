"""TensorBoard event files: written under the official names, read back with TensorBoard's own reader."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ada import tfevents
from ada.cli import main
from ada.errors import UserError
from ada.loss import StyleGAN2Loss
from ada.tfevents import TensorBoardTracker
from ada.tracking import Tracker, TrackingWarning
from tests._tiny import tiny_generator

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_ticks_metrics_and_grids_are_written_and_read_back(tmp_path):
    grid = tmp_path / "fakes000000.png"
    Image.fromarray(np.full((32, 48), 200, dtype=np.uint8), mode="L").save(grid)
    tracker = TensorBoardTracker.create(tmp_path, enabled=True)
    assert tracker.enabled
    for tick, kimg in enumerate((4.032, 8.064)):
        tracker.log_tick({"tick": tick, "kimg": kimg, "timestamp": 1.7e9 + tick, "loss_G": 1.5 + tick,
                          "loss_D": 0.5, "loss_D_r1": None, "p": 0.25, "r_t": 0.75, "r_v": 0.5,
                          "sec_per_kimg": 3.0, "skipped_steps": 0})
    tracker.log_metric(8.064, {"fid50k_full": 12.5})
    tracker.log_image(8.064, "fakes", grid)
    tracker.finish()

    events = read_events(tmp_path)
    # The step is the whole kimg, as in the official loop: runs of both line up in one TensorBoard.
    assert scalars(events, "Loss/G/loss") == [(4, 1.5), (8, 2.5)]
    assert scalars(events, "Progress/augment") == [(4, 0.25), (8, 0.25)]
    assert scalars(events, "Loss/signs/real")[-1] == (8, 0.75)
    assert scalars(events, "Timing/sec_per_kimg")[-1] == (8, 3.0)
    assert scalars(events, "ADA/r_v")[-1] == (8, 0.5)
    assert scalars(events, "Metrics/fid50k_full") == [(8, 12.5)]
    assert [e.wall_time for e in events.Scalars("Progress/kimg")] == [1.7e9, 1.7e9 + 1]
    assert "Loss/D/reg" not in events.Tags()["scalars"]  # a None (no R1 step this tick) is left out
    (image,) = events.Images("Images/fakes")
    assert (image.step, image.width, image.height) == (8, 48, 32)


def test_the_step_is_the_whole_kimg_as_the_official_loop_steps():
    """global_step = int(cur_nimg / 1e3) in the official training_loop.py."""
    kimgs = (0.0, 0.016, 0.999, 1.0, 2.3, 4.032, 25000.0)  # 2.3 * 1000 is 2299.9999999999995
    assert [tfevents.step_of(kimg) for kimg in kimgs] == [0, 0, 0, 1, 2, 4, 25000]


class QuadraticD(torch.nn.Module):
    """D(x) = sum(a x^2) / 2, whose gradient a x makes the unweighted R1 penalty sum((a x)^2)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, img: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return (self.a * img.square()).sum(dim=[1, 2, 3]) / 2


def test_the_weighted_penalties_are_logged_as_the_official_reg_losses(tmp_path):
    """ada.loss reports R1 times gamma / 2 and the path length penalty times pl_weight: the official
    Loss/D/reg and Loss/G/reg, not Loss/r1_penalty and Loss/pl_penalty (the penalties before weighting)."""
    G = tiny_generator(res=8).requires_grad_(True)
    a, real = torch.rand(1, 3, 8, 8) + 0.5, torch.randn(4, 3, 8, 8)
    gamma = 4.0
    r1 = StyleGAN2Loss(G, QuadraticD(a), None, r1_gamma=gamma).accumulate_gradients(
        "Dreg", real, None, torch.randn(4, G.z_dim), None, gain=1.0)["loss_D_r1"]
    unweighted_r1 = float((a * real).square().sum(dim=[1, 2, 3]).mean())
    assert float(r1) == pytest.approx(gamma / 2 * unweighted_r1, rel=1e-5)

    def pl_stat(pl_weight: float) -> float:
        torch.manual_seed(0)
        pl_loss = StyleGAN2Loss(G, QuadraticD(a), None, r1_gamma=gamma, pl_weight=pl_weight, style_mixing=0.0)
        return float(pl_loss.accumulate_gradients("Greg", real, None, torch.randn(4, G.z_dim), None, gain=1.0)[
            "loss_G_pl"])

    pl = pl_stat(3.0)
    assert pl > 0 and pl == pytest.approx(3 * pl_stat(1.0), rel=1e-5)

    tracker = TensorBoardTracker.create(tmp_path, enabled=True)
    tracker.log_tick({"kimg": 1.0, "loss_D_r1": float(r1), "loss_G_pl": pl})
    tracker.finish()
    events = read_events(tmp_path)
    assert [value for _, value in scalars(events, "Loss/D/reg")] == [pytest.approx(gamma / 2 * unweighted_r1, rel=1e-5)]
    assert [value for _, value in scalars(events, "Loss/G/reg")] == [pytest.approx(pl, rel=1e-6)]
    assert not {"Loss/r1_penalty", "Loss/pl_penalty"} & set(events.Tags()["scalars"])


def test_on_by_default_when_installed_off_on_request_and_on_other_ranks(tmp_path):
    assert tfevents.available()
    assert isinstance(TensorBoardTracker.create(tmp_path, enabled=None), TensorBoardTracker)
    assert type(TensorBoardTracker.create(tmp_path / "off", enabled=False)) is Tracker
    assert type(TensorBoardTracker.create(tmp_path / "rank1", enabled=True, rank=1)) is Tracker
    assert not (tmp_path / "off").exists() and not (tmp_path / "rank1").exists()


def test_an_explicit_request_without_the_package_is_refused(monkeypatch):
    from ada.config import resolve
    from ada.config_checks import validate

    monkeypatch.setattr(tfevents, "available", lambda: False)
    assert type(TensorBoardTracker.create(Path("unused"), enabled=None)) is Tracker
    cfg = resolve("tiny", {"data": "lfw-faces16", "tensorboard": True}, 16)
    with pytest.raises(UserError, match="pip install tensorboard"):
        validate(cfg)


def test_a_failing_writer_warns_once_and_turns_itself_off(tmp_path):
    class Broken:
        def add_scalar(self, *args, **kwargs):
            raise OSError("disk full")

        def close(self):
            raise AssertionError("a failed writer is not touched again")

    tracker = TensorBoardTracker(Broken())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_tick({"kimg": 1.0, "loss_G": 1.0})
        tracker.log_tick({"kimg": 2.0, "loss_G": 1.0})
        tracker.finish()
    assert [w.category for w in caught] == [TrackingWarning]
    assert "disk full" in str(caught[0].message) and "training goes on" in str(caught[0].message)


def test_a_training_run_writes_its_ticks_and_grids(tmp_path):
    main(["train", "--cfg", "tiny", "--data", "lfw-faces16", "--aug", "noaug", "--kimg", "0.048", "--tick",
          "0.016", "--snap", "2", "--metrics", "none", "--outdir", str(tmp_path / "on")])
    (run,) = (tmp_path / "on").iterdir()
    assert list(run.glob("events.out.tfevents.*"))
    events = read_events(run)
    # Ticks shorter than 1 kimg share step 0 (TensorBoard shows the last of them; stats.jsonl has all).
    assert scalars(events, "Progress/kimg") == [(0, pytest.approx(k)) for k in (0.016, 0.032, 0.048)]
    assert {"Loss/G/loss", "Loss/D/loss", "Progress/augment", "Loss/signs/real"} <= set(events.Tags()["scalars"])
    assert {"Images/reals", "Images/fakes_init", "Images/fakes"} <= set(events.Tags()["images"])
    main(["train", "--cfg", "tiny", "--data", "lfw-faces16", "--aug", "noaug", "--kimg", "0.016",
          "--metrics", "none", "--tensorboard=0", "--outdir", str(tmp_path / "off")])
    (run,) = (tmp_path / "off").iterdir()
    assert not list(run.glob("events.out.tfevents.*"))
