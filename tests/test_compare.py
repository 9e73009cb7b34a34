"""ada compare: run summaries, the table, the PNG, and clear errors for bad run directories."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from ada.compare import (
    FIGURE_SIZE_PX,
    choose_metric,
    compare,
    comparison_figure,
    format_table,
    load_run,
    summarize_run,
)
from ada.config import load_preset
from ada.errors import UserError
from ada.files import TornLineWarning, read_jsonl
from tests.conftest import REPO


def _ticks(n: int, kimg_per_tick: float, *, ada: bool, phase: float) -> list[dict[str, Any]]:
    """Tick records with values that differ from tick to tick, as training writes them."""
    ticks = []
    for tick in range(n):
        kimg = tick * kimg_per_tick
        ticks.append(
            {
                "tick": tick,
                "kimg": kimg,
                "timestamp": 1_700_000_000.0 + 30.0 * tick,
                "sec_per_tick": 30.0 + tick,
                # the first tick pays for start-up
                "sec_per_kimg": 40.0 if tick == 0 else 7.0 + ((tick * 7 + int(phase * 10)) % 5) * 0.25,
                "loss_G": 1.0 + 0.01 * tick,
                "loss_D": 1.2 - 0.01 * tick,
                "loss_G_pl": None,
                "loss_D_r1": 0.01,
                "p": round(min(1.0, 0.013 * tick * phase), 6) if ada else 0.0,
                # nulls inside the averaging window must be skipped, not counted as zero
                "r_t": None if tick % 4 == 3 else round(0.5 + 0.3 * np.sin(tick * phase), 6),
                "r_v": round(0.1 + 0.02 * tick * phase, 6),
                "logit_train": 0.5,
                "logit_val": None,
                "logit_gen": -0.5,
                "mem_cpu_gb": 1.5,
                "mem_gpu_gb": None,
                "skipped_steps": 0,
            }
        )
    return ticks


def write_run(
    root: Path,
    name: str,
    options: dict[str, Any],
    ticks: list[dict[str, Any]],
    metrics: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "training_options.json").write_text(json.dumps(options, indent=2))
    (run_dir / "stats.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
    for metric, evaluations in (metrics or {}).items():
        lines = []
        for kimg, results in evaluations:
            lines.append(
                json.dumps(
                    {
                        "metric": metric,
                        "results": results,
                        "kimg": kimg,
                        "snapshot": f"network-snapshot-{int(kimg):06d}.pt",
                        "total_time": 12.0,
                        "timestamp": 1_700_000_100.0 + kimg,
                    }
                )
            )
        (run_dir / f"metric-{metric}.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir


def trainer_options(aug: str = "ada", resume: str | None = None) -> dict[str, Any]:
    """training_options.json as the trainer writes it: the resolved TrainConfig."""
    cfg = load_preset("tiny")
    cfg.data, cfg.kimg, cfg.aug.mode, cfg.resume = "/data/faces-32.zip", 80.0, aug, resume
    return cfg.to_dict()


OPTIONS = trainer_options()


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    ada_run = write_run(
        tmp_path,
        "00000-faces-32-ada",
        OPTIONS,
        _ticks(21, 4.0, ada=True, phase=0.7),
        {
            "fid50k_full": [
                (k, {"fid50k_full": v}) for k, v in [(20.0, 88.5), (40.0, 61.25), (60.0, 64.0), (80.0, 70.5)]
            ]
        },
    )
    noaug_run = write_run(
        tmp_path,
        "00001-faces-32-noaug",
        trainer_options(aug="noaug", resume="/ckpt/ffhq-256.pt"),
        _ticks(13, 4.0, ada=False, phase=1.3),
        {"fid50k_full": [(k, {"fid50k_full": v}) for k, v in [(16.0, 95.0), (32.0, 101.0), (48.0, 99.0)]]},
    )
    return ada_run, noaug_run


def _expected(run_dir: Path) -> dict[str, Any]:
    """The table's numbers, worked out here straight from the files."""
    ticks = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    fid = [json.loads(line) for line in (run_dir / "metric-fid50k_full.jsonl").read_text().splitlines()]
    end, start = ticks[-1]["kimg"], ticks[0]["kimg"]
    window = [t["r_t"] for t in ticks if t["kimg"] >= end - 0.1 * (end - start) and t["r_t"] is not None]
    best = min(fid, key=lambda e: e["results"]["fid50k_full"])
    return {
        "best": best["results"]["fid50k_full"],
        "best_kimg": best["kimg"],
        "final": fid[-1]["results"]["fid50k_full"],
        "p": ticks[-1]["p"],
        "r_t_last10": sum(window) / len(window),
        "sec_per_kimg": statistics.median(t["sec_per_kimg"] for t in ticks[1:]),
        "kimg": ticks[-1]["kimg"],
    }


def test_summary_numbers_equal_the_values_in_the_stats(two_runs: tuple[Path, Path]) -> None:
    ada_run, noaug_run = two_runs
    for run_dir in two_runs:
        row = summarize_run(run_dir)
        expected = _expected(run_dir)
        assert row["metric"] == "fid50k_full"
        for key, value in expected.items():
            assert row[key] == pytest.approx(value), key
    ada_row, noaug_row = summarize_run(ada_run), summarize_run(noaug_run)
    assert (ada_row["best"], ada_row["best_kimg"], ada_row["final"]) == (61.25, 40.0, 70.5)
    assert ada_row["p"] > 0 and noaug_row["p"] == 0.0
    assert ada_row["resume"] is None and noaug_row["resume"] == "ffhq-256.pt"
    assert (ada_row["aug"], ada_row["target"], ada_row["cfg"], ada_row["dataset"]) == (
        "ada",
        0.6,
        "tiny",
        "faces-32",
    )
    assert ada_row["ticks"] == 21


def test_table_shows_the_summary_numbers(two_runs: tuple[Path, Path]) -> None:
    rows = [summarize_run(run_dir) for run_dir in two_runs]
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == 3
    assert "best fid50k_full" in lines[0] and "final fid50k_full" in lines[0]
    for line, run_dir in zip(lines[1:], two_runs, strict=True):
        fields = line.split()
        assert len(fields) == 12, fields
        name, aug, target, cfg, resume, best, best_kimg, final, p, r_t, sec, kimg = fields
        expected = _expected(run_dir)
        assert name == run_dir.name and cfg == "tiny"
        assert float(best) == pytest.approx(expected["best"], rel=1e-3)
        assert float(best_kimg) == pytest.approx(expected["best_kimg"], abs=0.05)
        assert float(final) == pytest.approx(expected["final"], rel=1e-3)
        assert float(p) == pytest.approx(expected["p"], abs=5e-4)
        assert float(r_t) == pytest.approx(expected["r_t_last10"], abs=5e-4)
        assert float(sec) == pytest.approx(expected["sec_per_kimg"], abs=5e-3)
        assert float(kimg) == pytest.approx(expected["kimg"], abs=0.05)
    # target only means something for ADA; resume says where a run started
    assert lines[1].split()[1:3] == ["ada", "0.6"] and lines[1].split()[4] == "scratch"
    assert lines[2].split()[1:3] == ["noaug", "-"] and lines[2].split()[4] == "ffhq-256.pt"


def test_missing_values_show_as_dash(tmp_path: Path) -> None:
    ticks = [{"tick": 0, "kimg": 0.0, "p": None, "r_t": None, "sec_per_kimg": None}]
    row = summarize_run(write_run(tmp_path, "00002-empty", {}, ticks))
    assert row["metric"] is None and row["best"] is None and row["r_t_last10"] is None
    fields = format_table([row]).splitlines()[1].split()
    assert fields[0] == "00002-empty" and fields[-1] == "0"
    assert set(fields[1:-1]) == {"-", "scratch"}


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tolerance).sum() > 50)


def test_compare_command_prints_the_table_and_writes_the_png(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "plots" / "compare.png"
    result = CliRunner().invoke(compare, [str(p) for p in two_runs] + ["--out", str(out)])
    assert result.exit_code == 0, result.output
    assert format_table([summarize_run(p) for p in two_runs]) in result.output
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == FIGURE_SIZE_PX == (1200, 800)
        pixels = np.asarray(image.convert("RGB"))
    # one line per run, in matplotlib's first two cycle colours
    assert _has_colour(pixels, (0x1F, 0x77, 0xB4)) and _has_colour(pixels, (0xFF, 0x7F, 0x0E))


def test_figure_has_one_line_per_run_with_the_stats_values(two_runs: tuple[Path, Path]) -> None:
    figure = comparison_figure(list(two_runs), metric="fid50k_full")
    axes = figure.axes
    assert [ax.get_title() for ax in axes] == [
        "augmentation probability p",
        "r_t = E[sign(D(x_train))]",
        "r_v (validation overfitting)",
        "fid50k_full (lower is better)",
    ]
    for run_dir in two_runs:
        ticks = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
        fid = [json.loads(line) for line in (run_dir / "metric-fid50k_full.jsonl").read_text().splitlines()]
        for ax, key in zip(axes[:3], ("p", "r_t", "r_v"), strict=True):
            (line,) = [line for line in ax.get_lines() if line.get_label() == run_dir.name]
            present = [t for t in ticks if t[key] is not None]  # nulls are bridged, not drawn as 0
            assert list(line.get_xdata()) == [t["kimg"] for t in present]
            assert list(line.get_ydata()) == [t[key] for t in present]
        (line,) = [line for line in axes[3].get_lines() if line.get_label() == run_dir.name]
        assert list(line.get_xdata()) == [e["kimg"] for e in fid]
        assert list(line.get_ydata()) == [e["results"]["fid50k_full"] for e in fid]
    # the ADA run's target is drawn on the r_t panel; the noaug run has none
    targets = [line for line in axes[1].get_lines() if line.get_label() == "_target"]
    assert len(targets) == 1 and list(targets[0].get_ydata()) == [0.6, 0.6]
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [p.name for p in two_runs]


def test_panels_without_data_say_so(tmp_path: Path) -> None:
    ticks = [{"tick": t, "kimg": 4.0 * t, "p": 0.0, "r_t": None, "r_v": None} for t in range(3)]
    figure = comparison_figure([write_run(tmp_path, "00008-noaug", trainer_options(aug="noaug"), ticks)])
    texts = [[text.get_text() for text in ax.texts] for ax in figure.axes]
    assert texts == [[], ["no data"], ["no data"], ["no data"]]
    assert figure.axes[3].get_title() == "metric"


def test_metric_choice(tmp_path: Path) -> None:
    ticks = _ticks(3, 4.0, ada=True, phase=1.0)
    pr = {
        "pr50k3_full": [
            (8.0, {"pr50k3_full_precision": 0.5, "pr50k3_full_recall": 0.2}),
            (12.0, {"pr50k3_full_precision": 0.4, "pr50k3_full_recall": 0.3}),
        ]
    }
    kid = {"kid50k_full": [(8.0, {"kid50k_full": 0.01})]}
    run = load_run(write_run(tmp_path, "00003-pr", OPTIONS, ticks, {**pr, **kid}))
    assert choose_metric([run]) == "kid50k_full"  # a key with a direction before one without
    row = summarize_run(run, "pr50k3_full_recall")
    assert (row["best"], row["best_kimg"], row["final"]) == (0.3, 12.0, 0.3)
    with pytest.raises(UserError, match="several results .*pr50k3_full_precision, pr50k3_full_recall"):
        choose_metric([run], "pr50k3_full")
    with pytest.raises(
        UserError, match="no run has this metric; available: kid50k_full, pr50k3_full_precision"
    ):
        choose_metric([run], "fid50k_full")


# ----------------------------------------------------------------------------- bad input


def _one_line(error: pytest.ExceptionInfo[UserError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_path_that_is_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError) as missing:
        summarize_run(tmp_path / "nope")
    assert "no such directory" in _one_line(missing)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError) as a_file:
        summarize_run(tmp_path / "file.txt")
    assert "is a file, not a run directory" in _one_line(a_file)
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError) as no_stats:
        summarize_run(tmp_path / "plain")
    assert "no stats.jsonl" in _one_line(no_stats)


def test_empty_stats(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "00004-new", OPTIONS, [])
    with pytest.raises(UserError) as error:
        summarize_run(run_dir)
    assert "holds no ticks yet" in _one_line(error)


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path: Path) -> None:
    ticks = _ticks(5, 4.0, ada=True, phase=1.0)
    run_dir = write_run(tmp_path, "00005-killed", OPTIONS, ticks[:4])
    with (run_dir / "stats.jsonl").open("a") as f:
        f.write(json.dumps(ticks[4])[:40])  # a writer killed mid-line
    with pytest.warns(TornLineWarning, match="line 5: incomplete last line skipped"):
        row = summarize_run(run_dir)
    assert row["ticks"] == 4 and row["kimg"] == ticks[3]["kimg"] and row["p"] == ticks[3]["p"]


def test_damaged_line_in_the_middle_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "stats.jsonl"
    path.write_text('{"tick": 0, "kimg": 0.0}\n{"tick": 1, "kimg"\n{"tick": 2, "kimg": 8.0}\n')
    with pytest.raises(UserError) as error:
        read_jsonl(path, strict=True)
    assert "line 2: not valid JSON" in _one_line(error)
    assert read_jsonl(path) == [{"tick": 0, "kimg": 0.0}]  # a run's own log: read up to the damage
    path.write_text('{"tick": 0, "kimg": 0.0}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2: expected a JSON object"):
        read_jsonl(path, strict=True)


def test_stats_without_kimg_and_bad_options_are_errors(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path, "00006-odd", OPTIONS, [{"tick": 0}])
    with pytest.raises(UserError, match="record 1 has no numeric 'kimg'"):
        load_run(run_dir)
    run_dir = write_run(tmp_path, "00007-odd", OPTIONS, _ticks(2, 4.0, ada=True, phase=1.0))
    (run_dir / "training_options.json").write_text("{not json")
    with pytest.raises(UserError, match="training_options.json: cannot read it"):
        load_run(run_dir)


def test_compare_command_rejects_bad_input_with_user_errors(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    not_png = runner.invoke(compare, [str(two_runs[0]), "--out", str(tmp_path / "c.pdf")])
    assert isinstance(not_png.exception, UserError) and "ending in .png" in str(not_png.exception)
    assert not (tmp_path / "c.pdf").exists()
    not_a_run = runner.invoke(compare, [str(two_runs[0]), str(tmp_path), "--out", str(tmp_path / "c.png")])
    assert isinstance(not_a_run.exception, UserError) and "no stats.jsonl" in str(not_a_run.exception)
    no_args = runner.invoke(compare, [])
    assert no_args.exit_code == 2 and "RUN_DIRS" in no_args.output


# ----------------------------------------------------------------------------- official run directories


def _official_tick(tick: int, kimg: float, p: float, signs: float) -> dict[str, Any]:
    """A stats.jsonl line as the official training loop writes it: {num, mean, std} per key."""

    def stat(value: float) -> dict[str, float]:
        return {"num": 1, "mean": value, "std": 0.0}

    return {
        "Progress/tick": stat(tick), "Progress/kimg": stat(kimg), "Progress/augment": stat(p),
        "Loss/signs/real": stat(signs), "Timing/sec_per_kimg": stat(9.5), "Loss/G/loss": stat(1.1),
        "timestamp": 1_700_000_000.0 + tick,
    }


def test_official_run_directories_read_too(tmp_path: Path) -> None:
    run_dir = tmp_path / "00000-metfaces-auto1-ada-target0.7"
    run_dir.mkdir()
    options = {
        "training_set_kwargs": {"class_name": "training.dataset.ImageFolderDataset", "path": "/d/metfaces.zip"},
        "augment_kwargs": {"class_name": "training.augment.AugmentPipe", "xflip": 1},
        "ada_target": 0.7, "ada_kimg": 500, "resume_pkl": "/ckpt/ffhq-1024.pkl", "total_kimg": 25000,
    }
    (run_dir / "training_options.json").write_text(json.dumps(options))
    ticks = [_official_tick(0, 0.032, 0.0, 0.9), _official_tick(1, 4.032, 0.05, 0.7),
             _official_tick(2, 8.064, 0.1, 0.6)]
    (run_dir / "stats.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))
    # The official metric lines name the snapshot but record no kimg.
    metric = {"results": {"fid50k_full": 40.5}, "metric": "fid50k_full", "snapshot_pkl": "network-snapshot-000008.pkl"}
    (run_dir / "metric-fid50k_full.jsonl").write_text(json.dumps(metric) + "\n")
    row = summarize_run(run_dir)
    assert (row["aug"], row["target"], row["dataset"], row["resume"]) == ("ada", 0.7, "metfaces", "ffhq-1024.pkl")
    assert (row["p"], row["kimg"], row["best"], row["best_kimg"]) == (0.1, 8.064, 40.5, 8.0)
    assert row["sec_per_kimg"] == 9.5
    targets = [line for line in comparison_figure([run_dir]).axes[1].get_lines() if line.get_label() == "_target"]
    assert len(targets) == 1 and list(targets[0].get_ydata()) == [0.7, 0.7]
    noaug = {key: value for key, value in options.items() if key not in ("ada_target", "augment_kwargs")}
    (run_dir / "training_options.json").write_text(json.dumps(noaug))
    assert (summarize_run(run_dir)["aug"], summarize_run(run_dir)["target"]) == ("noaug", None)


# ----------------------------------------------------------------------------- runs the trainer wrote


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny runs through the command line: ADA with target 0.7, and no augmentation."""
    from ada.cli import main

    outdir = tmp_path_factory.mktemp("runs")
    common = ["train", "--cfg", "tiny", "--data", "lfw-faces16", "--subset", "8", "--tick", "0.032", "--kimg",
              "0.064", "--outdir", str(outdir)]
    main([*common, "--aug", "ada", "--target", "0.7", "--ada-kimg", "1", "--ada-interval", "1"])
    main([*common, "--aug", "noaug"])
    ada_run, noaug_run = sorted(outdir.iterdir())
    return ada_run, noaug_run


def test_compare_on_real_runs_shows_mode_and_target_and_draws_the_target_line(
    real_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "compare.png"
    result = subprocess.run(
        [sys.executable, "-m", "ada", "compare", *map(str, real_runs), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    header, ada_line, noaug_line = result.stdout.splitlines()[:3]
    assert header.split()[:4] == ["run", "aug", "target", "cfg"]
    assert ada_line.split()[:4] == [real_runs[0].name, "ada", "0.7", "tiny"]
    assert noaug_line.split()[:4] == [real_runs[1].name, "noaug", "-", "tiny"]
    # kimg to the image, and the p the ADA run ended with
    assert ada_line.split()[-1] == noaug_line.split()[-1] == "0.064"
    ada_p = read_jsonl(real_runs[0] / "stats.jsonl")[-1]["p"]
    assert float(ada_line.split()[-4]) == pytest.approx(ada_p, abs=5e-4)
    with Image.open(out) as image:
        assert image.size == FIGURE_SIZE_PX
    figure = comparison_figure(list(real_runs))
    targets = [line for line in figure.axes[1].get_lines() if line.get_label() == "_target"]
    assert len(targets) == 1 and list(targets[0].get_ydata()) == [0.7, 0.7]
    assert targets[0].get_color() == "C0"  # the ADA run's colour; the noaug run has no target
