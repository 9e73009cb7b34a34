"""LeCam, DiffAugment and APA in the trainer: the flags (and the combinations refused), what a run
logs, and their state across checkpoints and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from ada.checkpoint import latest_snapshot, load_checkpoint, save_checkpoint
from ada.cli import main
from ada.config import TrainConfig
from ada.progress import format_tick
from ada.rundir import run_description, stored_config
from ada.training import TickStats
from augment import AugmentPipe, DiffAugment
from tests.test_reliability import OVERRIDES, RUN, SNAPSHOT, assert_same_training_state, build_trainer
from tests.test_reliability_inputs import cli_error

WITH_BOTH = dict(aug={**OVERRIDES["aug"], "apa": True}, loss={"lecam": 0.3})


# ----- flags -----


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--aug", "diffaug", "--p", "0.2"], "--p can only be given with --aug=fixed"),
        (["--aug", "noaug", "--diffaug-policy", "color"], "--diffaug-policy cannot be given with --aug=noaug"),
        (["--diffaug-policy", "cutout,flip"], "--diffaug-policy: unknown DiffAugment policy 'flip'"),
        (["--aug", "diffaug", "--target", "0.6"], "--target can only be given with --aug=ada"),
        (["--aug", "diffaug", "--augpipe", "bgc"], "--augpipe cannot be given with --aug=diffaug"),
        (["--aug", "diffaug", "--aug-extra", "blur"], "--aug-extra cannot be given with --aug=diffaug"),
        (["--aug", "diffaug", "--ada-kimg", "100"], "--ada-kimg can only be given with --aug=ada"),
        (["--aug", "diffaug", "--diffaug-policy", "color,flip"], "--diffaug-policy: unknown DiffAugment policy 'flip'"),
        (["--aug", "diffaug", "--diffaug-policy", "cutout,cutout"], "'cutout' is given twice"),
        (["--aug", "diffaug", "--diffaug-policy", ","], "--diffaug-policy: the policy is empty"),
        (["--lecam", "-1"], "--lecam=-1.0 must be at least 0"),
        (["--lecam", "nan"], "--lecam=nan must be a finite number"),
        (["--lecam", "inf"], "--lecam=inf must be a finite number"),
        (["--lecam-decay", "0.9"], "--lecam-decay can only be given with --lecam > 0"),
        (["--lecam", "0.1", "--lecam-decay", "1"], "--lecam-decay=1.0 must be in [0, 1)"),
        (["--apa-target", "0.5"], "--apa-target can only be given with --apa=1"),
        (["--apa", "0", "--apa-kimg", "100"], "--apa-kimg can only be given with --apa=1"),
        (["--apa", "1", "--apa-target", "1.5"], "--apa-target=1.5 must be in (0, 1)"),
        (["--apa", "1", "--apa-kimg", "0"], "--apa-kimg=0.0 must be positive"),
    ],
)
def test_refused_flags_end_in_one_line(flags, message, capsys, tmp_path):
    cli_error(capsys, ["train", "--cfg", "tiny", "--data", "lfw-faces16", "-n", "--outdir", str(tmp_path), *flags],
              message)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flags",
    [
        ["--aug", "diffaug"],
        ["--aug", "diffaug", "--diffaug-policy", "translation,color", "--apa", "1", "--lecam", "0.1"],
        ["--aug", "noaug", "--apa", "1", "--apa-target", "0.5", "--apa-kimg", "50"],
        ["--aug", "fixed", "--p", "0.2", "--lecam", "0.01", "--lecam-decay", "0.9"],
        ["--diffaug-policy", "cutout"],
        ["--aug", "fixed", "--p", "0.2", "--diffaug-policy", "translation,cutout"],
    ],
)
def test_accepted_combinations(flags, capsys, tmp_path):
    main(["train", "--cfg", "tiny", "--data", "lfw-faces16", "-n", "--outdir", str(tmp_path), *flags])
    assert "Dry run" in capsys.readouterr().out


def test_the_trainer_builds_what_the_flags_ask_for():
    t = build_trainer(aug={"mode": "diffaug", "diffaug": "translation,cutout"})
    assert isinstance(t.loss.augment_pipe, DiffAugment) and t.loss.augment_pipe.policy == ("translation", "cutout")
    assert t.augment_pipe is t.loss.augment_pipe and t.apa_controller is None and t.loss.lecam is None
    assert "diffaug-translation-cutout" in run_description(t.cfg, "data")
    for _ in range(2):
        t.train_step(TickStats())
    assert t.controller.p == 0  # DiffAugment has no p to adapt

    t = build_trainer(**WITH_BOTH)
    assert isinstance(t.loss.augment_pipe, AugmentPipe) and t.augment_pipe is t.loss.augment_pipe
    t.controller.p = 0.375  # the pipe reads the controller's p: there is no copy to update
    assert t.augment_pipe.p == 0.375
    assert t.loss.lecam_weight == 0.3 and t.loss.lecam.decay == 0.99
    # APA's target and speed default to ADA's.
    assert (t.apa_controller.target, t.apa_controller.ada_kimg) == (t.controller.target, t.controller.ada_kimg)
    assert run_description(t.cfg, "data").endswith("-apa-lecam0.3")

    t = build_trainer(aug={"mode": "noaug", "apa": True, "apa_target": 0.3, "apa_kimg": 20.0})
    assert (t.apa_controller.target, t.apa_controller.ada_kimg) == (0.3, 20.0)
    assert t.apa_controller.adjust and not t.controller.adjust


def test_diffaugment_alone_takes_its_whole_policy_unless_given_one():
    t = build_trainer(aug={"mode": "diffaug"})
    assert t.augment_pipe.policy == ("color", "translation", "cutout")
    assert run_description(t.cfg, "data").endswith("-diffaug-color-translation-cutout")
    assert isinstance(build_trainer().augment_pipe, AugmentPipe)  # ADA alone: no DiffAugment stage


def test_a_diffaugment_policy_with_ada_runs_before_its_pipe_on_every_image():
    t = build_trainer(aug={**OVERRIDES["aug"], "diffaug": "cutout"})
    fixed, pipe = t.augment_pipe
    assert isinstance(fixed, DiffAugment) and fixed.policy == ("cutout",) and isinstance(pipe, AugmentPipe)
    assert t.loss.augment_pipe is t.augment_pipe
    assert run_description(t.cfg, "data").endswith("-ada-target0.05-bgc-diffaug-cutout")
    # At p = 0 ADA's pipe is the identity, and the cutout still reaches every image: a quarter of
    # each 16x16 image, or less where the square leaves the border.
    t.controller.p = 0.0
    images = torch.rand([64, 3, 16, 16], device=t.device) + 1
    cut = (t.augment_pipe(images) == 0).all(dim=1).flatten(1).sum(dim=1)
    assert (cut > 0).all() and (cut <= 64).all() and (cut == 64).any()
    t.controller.p = 1.0  # and ADA's transforms follow it: cut squares no longer sit on the pixel grid
    assert not torch.equal(t.augment_pipe(images) == 0, fixed(images) == 0)
    for _ in range(2):
        t.train_step(TickStats())


# ----- what a run logs -----


def test_a_run_logs_p_apa_and_the_lecam_penalty(tmp_path):
    main(["train", *RUN, "--apa", "1", "--lecam", "0.3", "--kimg", "0.012", "--outdir", str(tmp_path)])
    (run,) = tmp_path.iterdir()
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert all(0 <= s["p_apa"] <= 1 for s in stats) and stats[-1]["p_apa"] > 0
    assert stats[0]["loss_D_lecam"] is None  # no anchors before the first D step
    assert all(s["loss_D_lecam"] > 0 for s in stats[1:])
    ticks = [line for line in (run / "log.txt").read_text().splitlines() if line.startswith("tick ")]
    assert len(ticks) == len(stats) and all(" p_apa " in line for line in ticks)
    assert f"p_apa {stats[-1]['p_apa']:.3f}" in ticks[-1]
    ckpt = load_checkpoint(latest_snapshot(run))
    assert ckpt["apa_controller"]["p"] == stats[-1]["p_apa"]
    assert ckpt["lecam"]["steps"] == 3 and ckpt["lecam"]["ema"].shape == (2,)
    # The record holds the values used: APA's target and speed resolved to ADA's.
    options = json.loads((run / "training_options.json").read_text())
    assert (options["aug"]["apa_target"], options["aug"]["apa_kimg"]) == (0.05, 0.1)
    assert options["loss"]["lecam"] == 0.3


def test_continuing_a_run_keeps_its_lecam_and_apa(tmp_path, capsys):
    """They define the run: the same values are a continuation, others are refused (a fine-tune instead)."""
    main(["train", *RUN, "--apa", "1", "--lecam", "0.3", "--kimg", "0.004", "--outdir", str(tmp_path)])
    (run,) = tmp_path.iterdir()
    capsys.readouterr()
    main(["train", "--resume", str(run), "--kimg", "0.008", "-n"])
    main(["train", *RUN, "--apa", "1", "--lecam", "0.3", "--kimg", "0.008", "--resume", str(run), "-n"])
    assert capsys.readouterr().out.count(f"the run would go to {run}; nothing written") == 2
    for flags, shown in ((["--lecam", "0.1"], "--lecam=0.1 would change the run"),
                         (["--lecam", "0.3", "--lecam-decay", "0.9"], "--lecam-decay=0.9 would change the run"),
                         (["--apa", "0"], "--apa=False would change the run"),
                         (["--apa", "1", "--apa-target", "0.5"], "--apa-target=0.5 would change the run"),
                         (["--aug", "diffaug"], "--aug=diffaug would change the run")):
        cli_error(capsys, ["train", "--resume", str(run), "--kimg", "0.008", "-n", *flags], shown,
                  "fine-tune into a new run")


def test_the_console_line_leaves_p_apa_out_when_apa_is_off():
    assert "p_apa" not in format_tick({"tick": 1, "kimg": 1.0, "p": 0.1, "p_apa": None})
    assert "p 0.100  p_apa 0.250" in format_tick({"tick": 1, "kimg": 1.0, "p": 0.1, "p_apa": 0.25})


# ----- checkpoints and resumes -----


def test_resume_restores_lecam_anchors_and_p_apa_exactly(tmp_path):
    """Two steps, a snapshot, a third step; a resumed trainer takes the third step to the same state, bit for bit."""
    path = tmp_path / SNAPSHOT
    a = build_trainer(**WITH_BOTH)
    for _ in range(2):
        a.train_step(TickStats())
    a.save_snapshot(path)
    saved = load_checkpoint(path)
    assert saved["apa_controller"]["p"] > 0 and saved["lecam"]["steps"] == 2  # state a lost resume would show
    a.train_step(TickStats())

    b = build_trainer(resume=str(path), **WITH_BOTH)
    assert b.apa_controller.state_dict() == saved["apa_controller"]
    assert b.loss.lecam.steps == 2 and torch.equal(b.loss.lecam.ema.cpu(), saved["lecam"]["ema"])
    b.train_step(TickStats())

    state_a, state_b = a.checkpoint_state(), b.checkpoint_state()
    assert state_b["progress"]["cur_nimg"] == state_a["progress"]["cur_nimg"]
    state_b["progress"] = state_a["progress"]  # the resumed one counts a tick more: its snapshot ended one
    assert_same_training_state(state_a, state_b)
    assert state_a["apa_controller"] == state_b["apa_controller"]
    assert state_a["lecam"]["steps"] == state_b["lecam"]["steps"] == 3
    assert torch.equal(state_a["lecam"]["ema"], state_b["lecam"]["ema"])


def test_a_checkpoint_without_the_new_state_resumes_with_it_starting_afresh(tmp_path):
    """Checkpoints written before these options, or by a run without them, hold no anchors and no p_apa."""
    a = build_trainer()
    a.train_step(TickStats())
    state = a.checkpoint_state()
    del state["lecam"], state["apa_controller"]
    save_checkpoint(tmp_path / SNAPSHOT, state)
    b = build_trainer(resume=str(tmp_path / SNAPSHOT), **WITH_BOTH)
    assert b.progress.cur_nimg == a.progress.cur_nimg
    assert b.apa_controller.p == 0 and b.loss.lecam.steps == 0
    b.train_step(TickStats())
    assert b.loss.lecam.steps == 1


@pytest.mark.parametrize(("mode", "kept"), [("ada", None), ("fixed", None), ("diffaug", "translation")])
def test_a_run_recorded_before_ada_took_a_diffaugment_policy_continues_as_it_was(mode, kept, tmp_path):
    """Records used to hold `aug.diffaug_policy` whatever the mode, read only by --aug=diffaug: an
    older ADA run must not gain the DiffAugment stage its record names."""
    record = TrainConfig(cfg="tiny").to_dict()
    record["aug"].pop("diffaug")
    record["aug"].update(mode=mode, diffaug_policy="translation")
    (tmp_path / "training_options.json").write_text(json.dumps(record))
    cfg = stored_config(tmp_path)
    assert cfg.aug.mode == mode and cfg.aug.diffaug == kept
