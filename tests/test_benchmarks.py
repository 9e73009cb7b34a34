"""The benchmark scripts: they run at tiny sizes, print their figures and memory, and take the
configuration they are given. No timing is asserted: speed is what the scripts print, not a test."""

from __future__ import annotations

import importlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ada import config as config_mod
from ada.networks import channels_per_resolution

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
# A checkout of NVlabs/stylegan2-ada-pytorch, outside the repository; its test is skipped without one.
OFFICIAL = os.environ.get("ADA_OFFICIAL_CHECKOUT")

MEMORY_LINE = re.compile(r"^([\w-]+) peak memory: RSS (\d+) MiB \((-?\d+) MiB above setup\)")


@pytest.fixture
def train_speed(monkeypatch):
    # The scripts import their shared harness as a sibling module, as `python benchmarks/X.py` does.
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("train_speed")


def run_script(name: str, *argv: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(BENCHMARKS / name), *argv], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


def figure(line: str, prefix: str) -> float:
    assert line.startswith(prefix), line
    value = float(line[len(prefix):].split()[0])
    assert math.isfinite(value) and value > 0, line
    return value


def memory_of(lines: list[str]) -> dict[str, tuple[int, int]]:
    found = {}
    for line in lines:
        m = MEMORY_LINE.match(line)
        if m:
            found[m[1]] = (int(m[2]), int(m[3]))
    return found


def test_train_speed_prints_sec_per_kimg_and_peak_memory():
    lines = run_script("train_speed.py", "--preset", "tiny", "--res", "16", "--batch", "4", "--iters", "16",
                       "--rounds", "1", "--warmup", "0", "--threads", "1")
    assert lines[0].startswith("preset tiny: res 16, batch 4,")
    assert "compile off" in lines[0]
    figure(lines[-1], "sec/kimg:")
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 1
    figure(rounds[0], "round 0: ours")
    peak, above = memory_of(lines)["ours"]
    assert peak > 0 and 0 <= above <= peak
    assert not any(line.startswith("ratio") for line in lines)  # no --official, no comparison


def test_train_speed_preset_reaches_the_trainer(train_speed):
    preset = config_mod.load_preset("tiny")
    args = train_speed.parse_args(["--preset", "tiny", "--res", "16"])
    cfg = args.config
    assert (cfg.batch, cfg.model.channel_base, cfg.model.channel_max) == (
        preset.batch, preset.model.channel_base, preset.model.channel_max)
    assert (cfg.model.z_dim, cfg.model.map_layers, cfg.loss.r1_gamma) == (
        preset.model.z_dim, preset.model.map_layers, preset.loss.r1_gamma)
    assert not cfg.fp32 and cfg.model.num_fp16_res == preset.model.num_fp16_res  # the preset's mixed precision

    # Explicit flags win over the preset, and what the Trainer builds follows them.
    args = train_speed.parse_args(["--preset", "tiny", "--res", "16", "--batch", "4", "--cbase", "512",
                                   "--gamma", "0.5", "--fp32", "--compile", "--nhwc"])
    cfg = args.config
    assert (cfg.batch, cfg.batch_gpu, cfg.model.channel_base, cfg.loss.r1_gamma) == (4, None, 512, 0.5)
    assert cfg.model.channel_max == preset.model.channel_max and cfg.model.z_dim == preset.model.z_dim
    assert cfg.fp32 and cfg.compile and cfg.nhwc
    runner = train_speed.OursRunner(cfg, 16, "cpu")
    trainer = runner.trainer
    assert trainer.cfg is cfg and trainer.batch_gpu == 4
    assert trainer.G.z_dim == preset.model.z_dim
    channels = channels_per_resolution(512, preset.model.channel_max, [16])[16]
    assert trainer.G.synthesis.b16.conv1.weight.shape[0] == channels


def test_train_speed_paper_and_auto_presets(train_speed):
    paper = config_mod.load_preset("paper256")
    cfg = train_speed.parse_args(["--preset", "paper256", "--res", "32"]).config
    assert (cfg.batch, cfg.batch_gpu, cfg.model.mbstd_group, cfg.optim.ema_kimg) == (
        paper.batch, paper.batch_gpu, paper.model.mbstd_group, paper.optim.ema_kimg)

    rules = config_mod.auto_rules(32, 1)
    cfg = train_speed.parse_args(["--preset", "auto", "--res", "32"]).config
    assert (cfg.batch, cfg.model.channel_base, cfg.loss.r1_gamma) == (
        rules["batch"], rules["model"]["channel_base"], rules["loss"]["r1_gamma"])
    # The auto rules follow --res.
    assert train_speed.parse_args(["--preset", "auto", "--res", "512"]).config.model.channel_base != \
        cfg.model.channel_base


def test_train_speed_without_preset_is_the_fp32_reference(train_speed):
    cfg = train_speed.parse_args([]).config
    assert cfg.fp32 and not cfg.bf16
    assert (cfg.batch, cfg.model.channel_base, cfg.model.channel_max, cfg.model.map_layers, cfg.model.z_dim) == (
        32, 1024, 512, 2, 512)
    assert cfg.loss.r1_gamma == pytest.approx(config_mod.r1_gamma_heuristic(16, 32))
    cfg = train_speed.parse_args(["--batch", "8", "--res", "32", "--bf16"]).config
    assert cfg.bf16 and not cfg.fp32
    assert cfg.loss.r1_gamma == pytest.approx(config_mod.r1_gamma_heuristic(32, 8))


@pytest.mark.parametrize("argv, message", [
    (["--preset", "no-such-preset"], "invalid choice"),
    (["--preset", "tiny", "--batch", "6"], "minibatch-stddev group"),
    (["--res", "12"], "not a power of two"),
    (["--fp32", "--bf16"], "not allowed with"),
])
def test_train_speed_bad_arguments_are_parser_errors(train_speed, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        train_speed.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(not OFFICIAL, reason="set ADA_OFFICIAL_CHECKOUT to a stylegan2-ada-pytorch checkout")
def test_train_speed_side_by_side_with_official_in_batch_gpu_rounds():
    lines = run_script("train_speed.py", "--preset", "tiny", "--res", "16", "--batch", "8", "--batch-gpu", "4",
                       "--augpipe", "bgc", "--iters", "4", "--rounds", "1", "--warmup", "0", "--threads", "1",
                       "--official", OFFICIAL)
    assert "batch 8 (batch_gpu 4)" in lines[0]
    figure(next(line for line in lines if line.startswith("official sec/kimg:")), "official sec/kimg:")
    figure(next(line for line in lines if line.startswith("ratio ours/official:")), "ratio ours/official:")
    assert set(memory_of(lines)) == {"ours", "official"}
    figure(lines[-1], "sec/kimg:")


def test_augment_speed_prints_img_per_second_and_peak_memory():
    lines = run_script("augment_speed.py", "--res", "16", "--batch", "4", "--iters", "2", "--repeats", "1",
                       "--warmup", "1", "--threads", "1")
    assert lines[0].startswith("preset bgc, p 0.6, batch 4x3x16x16")
    figure(lines[-1], "img/s:")
    peak, above = memory_of(lines)["ours"]
    assert peak > 0 and 0 <= above <= peak


def test_augment_speed_compares_the_warps_in_one_run():
    lines = run_script("augment_speed.py", "--res", "16", "--batch", "4", "--iters", "2", "--repeats", "1",
                       "--warmup", "1", "--threads", "1", "--compare-warp")
    assert set(memory_of(lines)) == {"ours", "torch-warp"}
    figure(next(line for line in lines if line.startswith("ratio ours/torch-warp:")), "ratio ours/torch-warp:")
    difference = next(line for line in lines if line.startswith("largest difference between the warps:"))
    assert float(difference.split(":")[1]) < 1e-4  # the same result to float32 rounding
    figure(lines[-1], "img/s:")


def test_kornia_ada_comparison_prints_its_tables():
    lines = run_script("kornia_ada.py", "--p", "0.5", "--draws", "1", "--repeats", "1", "--kimg", "1,2")
    text = "\n".join(lines)
    assert "| value range | p in [0, 1], starting at 0 | p in [0, max_p = 0.8]" in text
    measured = [line for line in lines if line.startswith("| 0.5 |")]
    assert [line.split("|")[2].strip() for line in measured] == ["ours", "kornia"]
    # At p = 0.5 kornia leaves about half of the images as they were; ADA's bgc draws 13 transforms for each.
    kornia_unchanged = float(measured[1].split("|")[3].strip().rstrip("%")) / 100
    assert 0.35 < kornia_unchanged < 0.65
    assert float(measured[0].split("|")[3].strip().rstrip("%")) / 100 < 0.05
    controller = [line for line in lines if line.startswith("| 1.00 (1.00) |")]
    assert [line.split("|")[2].strip() for line in controller] == ["ours", "kornia"]


def test_metric_speed_times_what_the_metrics_need():
    lines = run_script("metric_speed.py", "--metrics", "kid50k_full,pr50k3_full,is50k,ppl2_wend", "--batch", "2",
                       "--resolution", "16", "--batches", "1", "--dim", "32", "--kid-subsets", "1",
                       "--pr-rows", "20", "--threads", "1")
    assert "random network weights" in lines[0]
    rate = figure(lines[-1], "img/s:")
    # `is` needs the logits, so they are part of the timed extraction; no FID part was asked for.
    features = next(line for line in lines if line.startswith("inception features+logits"))
    assert f"{rate:.1f} img/s" in features
    assert not any("FID" in line for line in lines)
    assert any(line.startswith("kid50k_full: KID at 32-d, 1 subsets of 1000") for line in lines)
    assert any(line.startswith("pr50k3_full: precision/recall at 32-d, k=3, 20 real vs 20 generated")
               for line in lines)
    assert any(line.startswith("ppl2_wend: not timed") for line in lines)
    peaks = [int(m[1]) for m in (re.match(r"\s+peak memory: RSS (\d+) MiB", line) for line in lines) if m]
    assert len(peaks) == 3 and min(peaks) > 0  # features, KID, PR
    overall = next(line for line in lines if line.startswith("peak memory: RSS"))
    assert int(overall.split()[3]) == max(peaks)


def test_metric_speed_rejects_an_unknown_metric():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(BENCHMARKS / "metric_speed.py"), "--metrics", "fid50k_ful"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2
    assert "--metrics: unknown metric 'fid50k_ful'" in result.stderr and "Traceback" not in result.stderr
