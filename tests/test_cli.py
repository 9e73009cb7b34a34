"""End to end through the command line: a tiny run, resume, generate, and refusing bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ada.checkpoint import load_checkpoint
from ada.cli import main
from ada.distributed import DistContext
from ada.files import read_jsonl
from ada.launch import resolve_config, split_dataset
from ada.training import Trainer
from tests.conftest import REPO, write_images

TINY = ["--cfg", "tiny", "--data", "lfw-faces16", "--aug", "noaug", "--tick", "0.032", "--snap", "2"]
STATS_KEYS = {"tick", "kimg", "sec_per_kimg", "loss_G", "loss_D", "p", "r_t", "r_v", "timestamp"}


def train(outdir, *extra):
    main(["train", *TINY, "--outdir", str(outdir), *extra])
    runs = sorted(outdir.iterdir())
    return runs[-1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 0.096 kimg run (6 steps of 16): tick 0 after the first step, then ticks at 48, 80 and 96 images."""
    outdir = tmp_path_factory.mktemp("runs")
    return train(outdir, "--kimg", "0.096")


def test_tiny_run_writes_grids_snapshot_and_stats(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"training_options.json", "reals.png", "fakes_init.png", "stats.jsonl"} <= names
    # Ticks shorter than 1 kimg: tick 0 has the official name, later snapshots add the images beyond it.
    assert {"network-snapshot-000000.pt", "network-snapshot-000000_080.pt", "network-snapshot-000000_096.pt",
            "fakes000000.png", "fakes000000_080.png", "fakes000000_096.png"} <= names
    stats = read_jsonl(tiny_run / "stats.jsonl")
    assert [s["tick"] for s in stats] == [0, 1, 2, 3]
    assert [s["kimg"] for s in stats] == pytest.approx([0.016, 0.048, 0.08, 0.096])
    assert stats[-1]["kimg"] == pytest.approx(0.096)
    for record in stats:
        assert STATS_KEYS <= set(record)
        assert record["p"] == 0.0 and record["r_t"] is not None and record["loss_G"] > 0
    reals = Image.open(tiny_run / "reals.png")
    assert reals.mode == "L" and reals.width % 16 == 0
    options = json.loads((tiny_run / "training_options.json").read_text())
    assert options["data"] == "lfw-faces16" and options["aug"]["mode"] == "noaug"


def test_snapshot_is_complete_and_safe_to_load(tiny_run):
    ckpt = load_checkpoint(tiny_run / "network-snapshot-000000_096.pt")  # weights_only=True inside
    assert ckpt["progress"]["cur_nimg"] == 96
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "controller", "rng", "config", "G_kwargs"} <= set(ckpt)
    assert ckpt["config"]["cfg"] == "tiny"


def test_resume_continues_at_the_same_kimg_with_the_same_optimiser_state(tiny_run):
    snapshot = tiny_run / "network-snapshot-000000_096.pt"
    ckpt = load_checkpoint(snapshot)
    cfg, ds = resolve_config("tiny", {"data": "lfw-faces16", "aug": {"mode": "noaug"}, "resume": str(snapshot)})
    train_set, val_set = split_dataset(cfg, ds)
    trainer = Trainer(cfg, train_set, val_set, DistContext(), log=lambda m: None)
    assert trainer.progress.cur_nimg == 96 and trainer.progress.batch_idx == 6
    state = trainer.phases[0].opt.state_dict()["state"]
    for key, saved in ckpt["opt_G"]["state"].items():
        assert torch.equal(state[key]["exp_avg"], saved["exp_avg"])
    for name, tensor in trainer.G.state_dict().items():
        assert torch.equal(tensor, ckpt["G"][name])


def test_resume_run_dir_appends_without_duplicate_ticks(tmp_path):
    run = train(tmp_path, "--kimg", "0.064")
    before = read_jsonl(run / "stats.jsonl")
    main(["train", *TINY, "--outdir", str(tmp_path), "--kimg", "0.128", "--resume", str(run)])
    assert len(list(tmp_path.iterdir())) == 1  # continued in place
    after = read_jsonl(run / "stats.jsonl")
    assert after[: len(before)] == before
    kimgs = [s["kimg"] for s in after]
    assert kimgs == sorted(kimgs) and len(set(kimgs)) == len(kimgs)
    assert kimgs[-1] == pytest.approx(0.128)


def test_generate_writes_images_and_grid(tiny_run, tmp_path):
    out = tmp_path / "gen"
    main(["generate", "--network", str(tiny_run), "--seeds", "0-2,7", "--trunc", "0.7", "--outdir", str(out)])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["grid.png", "seed0000.png", "seed0001.png", "seed0002.png", "seed0007.png"]
    img = Image.open(out / "seed0001.png")
    assert img.size == (16, 16)
    again = tmp_path / "again"
    main(["generate", "--network", str(tiny_run), "--seeds", "1", "--trunc", "0.7", "--outdir", str(again)])
    assert (again / "seed0001.png").read_bytes() == (out / "seed0001.png").read_bytes()


def test_dry_run_writes_nothing(tmp_path, capsys):
    main(["train", *TINY, "--outdir", str(tmp_path / "runs"), "--dry-run"])
    assert "Dry run" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


# ----- bad input: one line on stderr, non-zero exit, no traceback, nothing lost -----


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_clean_error(result, pattern):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and pattern in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--data", "/nonexistent/folder"], "no such file or folder"),
        (["--data", "lfw-faces16", "--cfg", "nope"], "unknown preset"),
        (["--data", "lfw-faces16", "--kimg", "abc"], "--kimg"),
        (["--data", "lfw-faces16", "--aug", "sometimes"], "--aug"),
        (["--data", "lfw-faces16", "--target", "1.5"], "--target=1.5"),
        (["--data", "lfw-faces16", "--batch", "7", "--gpus", "2"], "not divisible"),
        (["--data", "lfw-faces16", "--augpipe", "zzz"], "'zzz' is not one of 'blit'"),
    ],
)
def test_bad_flags(tmp_path, args, pattern):
    assert_clean_error(run_cli("--outdir", str(tmp_path), *args), pattern)
    assert not any(tmp_path.iterdir())


def test_empty_and_corrupt_data(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_cli("--data", str(tmp_path / "empty"), "--outdir", str(tmp_path / "o")), "no images")
    write_images(tmp_path / "bad", 4, 16)
    (tmp_path / "bad" / "x.png").write_bytes(b"not an image at all")
    assert_clean_error(run_cli("--data", str(tmp_path / "bad"), "--outdir", str(tmp_path / "o")), "x.png")


def test_corrupt_and_incompatible_checkpoints(tiny_run, tmp_path):
    before = sorted((p.name, p.stat().st_size) for p in tiny_run.iterdir())
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    result = run_cli(*TINY, "--outdir", str(tmp_path / "o"), "--resume", str(bad))
    assert_clean_error(result, "bad.pt")
    write_images(tmp_path / "d32", 8, 32)
    result = run_cli("--cfg", "tiny", "--data", str(tmp_path / "d32"), "--outdir", str(tmp_path / "o"),
                     "--resume", str(tiny_run / "network-snapshot-000000_096.pt"))
    assert_clean_error(result, "16x16x1")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert sorted((p.name, p.stat().st_size) for p in tiny_run.iterdir()) == before


def test_generate_bad_seeds(tiny_run, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ada", "generate", "--network", str(tiny_run), "--seeds", "5-1",
         "--outdir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert_clean_error(result, "--seeds")
