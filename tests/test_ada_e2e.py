"""ADA in a real (tiny) training run: p rises when D overfits, r_t climbs without augmentation,
r_v is measured against withheld reals, and resume restores p exactly."""

from __future__ import annotations

import pytest

from ada.checkpoint import load_checkpoint
from ada.cli import main
from ada.distributed import DistContext
from ada.files import read_jsonl
from ada.launch import resolve_config, split_dataset
from ada.training import Trainer

# Eight training images: D memorises them within a few hundred images.
SMALL = ["--data", "lfw-faces16", "--cfg", "tiny", "--subset", "8", "--tick", "0.064"]


def run(outdir, *extra):
    main(["train", *SMALL, "--outdir", str(outdir), *extra])
    return sorted(outdir.iterdir())[-1]


@pytest.fixture(scope="module")
def ada_run(tmp_path_factory):
    return run(tmp_path_factory.mktemp("ada"), "--aug", "ada", "--target", "0.3", "--ada-kimg", "1", "--kimg", "0.256")


def test_noaug_run_shows_r_t_climbing_toward_one(tmp_path):
    stats = read_jsonl(run(tmp_path, "--aug", "noaug", "--kimg", "0.32") / "stats.jsonl")
    r_t = [s["r_t"] for s in stats]
    assert all(s["p"] == 0 for s in stats)
    assert r_t[-1] > 0.6 and r_t[-1] > r_t[0] + 0.4, r_t


def test_ada_run_raises_p(ada_run):
    stats = read_jsonl(ada_run / "stats.jsonl")
    p = [s["p"] for s in stats]
    assert p[0] >= 0 and p[-1] > 0, p
    # Every update moves p by exactly batch * interval / (ada_kimg * 1000) = 16 * 4 / 1000.
    for value in p:
        assert value / 0.064 == pytest.approx(round(value / 0.064), abs=1e-6)


def test_r_v_and_the_mean_logits_are_logged(ada_run):
    for s in read_jsonl(ada_run / "stats.jsonl"):
        train, val, gen = s["logit_train"], s["logit_val"], s["logit_gen"]
        assert s["r_v"] == pytest.approx((train - val) / (train - gen))


def test_without_validation_split_r_v_is_null_and_said_once(tmp_path, capsys):
    run_dir = run(tmp_path, "--aug", "noaug", "--kimg", "0.128", "--val", "0")
    assert all(s["r_v"] is None for s in read_jsonl(run_dir / "stats.jsonl"))
    out = capsys.readouterr().out
    assert out.count("r_v is not measured") == 1
    assert len(read_jsonl(run_dir / "log.jsonl")) == 1


def test_resume_restores_p_exactly(ada_run):
    snapshot = sorted(ada_run.glob("network-snapshot-*.pt"))[-1]
    saved = load_checkpoint(snapshot)["controller"]
    cfg, ds = resolve_config("tiny", {"data": "lfw-faces16", "subset": 8, "resume": str(ada_run)})
    train_set, val_set = split_dataset(cfg, ds)
    trainer = Trainer(cfg, train_set, val_set, DistContext(), log=lambda m: None)
    assert saved["p"] > 0
    assert trainer.controller.p == saved["p"]
    # Continuing the run directory keeps the run's own --ada-kimg (not the default 500, not the transfer rate).
    assert trainer.controller.ada_kimg == 1


def test_collapse_signal_is_logged_and_warns_once(ada_run):
    stats = read_jsonl(ada_run / "stats.jsonl")
    assert all(0 < s["diversity"] < 5 for s in stats)
    cfg, ds = resolve_config("tiny", {"data": "lfw-faces16", "subset": 8})
    trainer = Trainer(cfg, *split_dataset(cfg, ds), DistContext(), log=lambda m: None)
    healthy = trainer.measure_diversity()
    warnings = []
    trainer.log = warnings.append
    trainer.progress.cur_tick = 3
    # G_ema turned into a generator of one image: every sample is the same.
    for p in trainer.G_ema.synthesis.parameters():
        p.data.zero_()
    assert trainer.measure_diversity() < 0.05 < healthy
    trainer.measure_diversity()
    assert len(warnings) == 1 and "collapsed" in warnings[0]


def test_run_writes_reals_beside_enlarged_fakes(ada_run):
    from PIL import Image

    reals = Image.open(ada_run / "reals.png")
    both = Image.open(ada_run / "reals_and_fakes.png")
    # 16 px images are shown at 64 px: four times the grid, twice over, plus the grey band.
    assert both.height == 4 * reals.height and both.width == 4 * (2 * reals.width + 8)
