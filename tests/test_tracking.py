"""ada.tracking (wandb logging that never stops training) and ada.progress (console output).

wandb runs here only offline: the test reads back the run's transaction log (the .wandb file
that `wandb sync` would upload) and checks the config, history rows and summary in it.
"""

from __future__ import annotations

import io
import json
import math
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ada import tracking
from ada.progress import format_duration, format_tick, progress
from ada.tracking import (
    Tracker,
    TrackingWarning,
    best_evaluation,
    dataset_name,
    flatten_config,
    metric_direction,
    metric_summary,
    numeric_items,
    run_config,
)

CONFIG = {
    "data": "/datasets/faces-32.zip",
    "cfg": "small",
    "aug": "ada",
    "target": 0.6,
    "augpipe": "bgc",
    "batch": 16,
    "kimg": 12,
    "resume": None,
    "seed": 3,
    "loss": {"r1_gamma": 0.05, "pl_weight": 2.0},
    "G": {"mapping": {"layers": 2}},
}

TICKS = [
    {
        "tick": 0,
        "kimg": 0.0,
        "loss_G": 0.71,
        "loss_D": 1.38,
        "loss_G_pl": None,
        "p": 0.0,
        "r_t": None,
        "r_v": None,
        "sec_per_kimg": 5.5,
        "mem_gpu_gb": None,
        "skipped_steps": 0,
        "phase": "start",
    },
    {
        "tick": 1,
        "kimg": 4.0,
        "loss_G": 0.93,
        "loss_D": 1.21,
        "loss_G_pl": 0.02,
        "p": 0.012,
        "r_t": 0.65,
        "r_v": 0.1,
        "sec_per_kimg": 2.25,
        "mem_gpu_gb": None,
        "skipped_steps": 0,
        "extra_new_key": 7,
    },
    {
        "tick": 2,
        "kimg": 8.0,
        "loss_G": 1.05,
        "loss_D": 1.10,
        "loss_G_pl": 0.03,
        "p": 0.02,
        "r_t": 0.58,
        "r_v": 0.2,
        "sec_per_kimg": 2.5,
        "mem_gpu_gb": None,
        "skipped_steps": 1,
        "nan_loss": float("nan"),
    },
]


# ----------------------------------------------------------------------------- wandb log reader

_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of 7-byte-headed chunks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    records, pending, pos = [], b"", 7  # 7 = ':W&B' + 2-byte magic + 1-byte version
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # block trailer too small for a header: zero padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _item_path(item: Any) -> tuple[str, ...]:
    return (item.key,) if item.key else tuple(item.nested_key)


def wandb_run_contents(wandb_dir: Path) -> dict[str, Any]:
    """The run record, config, history rows, summary, metric definitions and exit of the one offline run."""
    logs = sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(logs) == 1, logs
    # run.finish() can return before wandb's service process has flushed the log; its last
    # record is the run's exit.
    deadline = time.monotonic() + 60
    records = read_wandb_records(logs[0])
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.1)
        records = read_wandb_records(logs[0])
    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "metrics": [], "exit": None}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = record.run
            out["config"].update(
                {_item_path(i)[0]: json.loads(i.value_json) for i in record.run.config.update}
            )
        elif kind == "config":
            out["config"].update({_item_path(i)[0]: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                keys = _item_path(item)
                if len(keys) == 1:
                    row[keys[0]] = json.loads(item.value_json)
                else:
                    row.setdefault(keys[0], {})[keys[1]] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in record.summary.update:
                keys = _item_path(item)
                if len(keys) == 1:
                    out["summary"][keys[0]] = json.loads(item.value_json)
        elif kind == "metric":
            out["metrics"].append(record.metric)
        elif kind == "exit":
            out["exit"] = record.exit
    out["run_dir"] = logs[0].parent
    return out


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    wandb_dir = tmp_path / "wandb_home"
    wandb_dir.mkdir()
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_GROUP", "WANDB_NAME", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(wandb_dir / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(wandb_dir / "cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(wandb_dir / "data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return wandb_dir


def _run_dir(tmp_path: Path) -> Path:
    run_dir = tmp_path / "00007-faces-32-ada"
    run_dir.mkdir()
    return run_dir


# ----------------------------------------------------------------------------- pure helpers


def test_dataset_name_is_the_last_component_without_archive_suffix() -> None:
    assert dataset_name("/datasets/faces-32.zip") == "faces-32"
    assert dataset_name("data/cells/") == "cells"
    assert dataset_name("shards.tar.gz") == "shards"
    assert dataset_name("mnist16") == "mnist16"
    assert dataset_name("dir.v2/my.images") == "my.images"
    assert dataset_name(None) == "unknown"


def test_flatten_config_gives_dotted_keys_and_json_values() -> None:
    flat = flatten_config(
        {"a": 1, "loss": {"r1": 0.5, "pl": {"w": 2}}, "p": Path("/x/y"), "t": (1, 2), "e": {}}
    )
    assert flat == {"a": 1, "loss.r1": 0.5, "loss.pl.w": 2, "p": "/x/y", "t": [1, 2], "e": {}}


def test_run_config_adds_the_keys_runs_are_compared_by() -> None:
    cfg = run_config(CONFIG, Path("/runs/00007-faces-32-ada"))
    assert cfg["dataset"] == "faces-32"
    assert cfg["resumed"] is False
    assert cfg["run_dir"] == "/runs/00007-faces-32-ada"
    assert cfg["loss.r1_gamma"] == 0.05 and cfg["G.mapping.layers"] == 2
    assert run_config({**CONFIG, "resume": "/ckpt/ffhq.pt"}, Path("r"))["resumed"] is True
    assert run_config({**CONFIG, "resume": "noresume"}, Path("r"))["resumed"] is False
    # a key the config already has is not overwritten by a derived one
    assert run_config({**CONFIG, "dataset": "mine"}, Path("r"))["dataset"] == "mine"


def test_numeric_items_keeps_numbers_and_drops_nulls_and_text() -> None:
    items = numeric_items(TICKS[0])
    assert items["loss_G"] == 0.71 and items["skipped_steps"] == 0.0
    assert "loss_G_pl" not in items and "r_t" not in items and "phase" not in items
    assert numeric_items({"flag": True, "x": [1]}) == {"flag": 1.0}


@pytest.mark.parametrize(
    ("key", "direction"),
    [
        ("fid50k_full", "min"),
        ("kid50k_full", "min"),
        ("ppl2_wend", "min"),
        ("is50k", "max"),
        ("is50k_mean", "max"),
        ("is50k_std", None),
        ("pr50k3_full_precision", "max"),
        ("pr50k3_full_recall", "max"),
        ("something_else", None),
    ],
)
def test_metric_direction(key: str, direction: str | None) -> None:
    assert metric_direction(key) == direction


def test_best_evaluation_follows_direction_prefers_earliest_and_skips_nan() -> None:
    evals = [(4.0, 30.0), (8.0, 20.0), (12.0, float("nan")), (16.0, 20.0), (20.0, 25.0)]
    assert best_evaluation("fid50k_full", evals) == (8.0, 20.0)
    assert best_evaluation("pr50k3_full_recall", [(4.0, 0.1), (8.0, 0.3), (12.0, 0.2)]) == (8.0, 0.3)
    assert best_evaluation("is50k_std", [(4.0, 1.0)]) is None
    assert best_evaluation("fid50k_full", [(4.0, float("nan"))]) is None


def test_metric_summary_has_final_and_best_with_its_kimg() -> None:
    summary = metric_summary(
        {"fid50k_full": [(4.0, 30.0), (8.0, 20.0), (12.0, 25.0)], "is50k_std": [(4.0, 0.2)]}
    )
    assert summary == {
        "final/fid50k_full": 25.0,
        "best/fid50k_full": 20.0,
        "best/fid50k_full_kimg": 8.0,
        "final/is50k_std": 0.2,
    }


# ----------------------------------------------------------------------------- off by default


def test_no_project_gives_a_noop_tracker_without_importing_wandb(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from ada.tracking import Tracker\n"
        f"t = Tracker.create(run_dir=Path({str(tmp_path)!r}), config={{'data': 'x'}}, env={{}})\n"
        "t.log_tick({'kimg': 1.0, 'loss_G': 1.0}); t.log_metric(1.0, {'fid50k_full': 3.0}); t.finish()\n"
        "assert not t.enabled\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_other_ranks_and_disabled_mode_are_noops_without_warning(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        other_rank = Tracker.create(project="p", mode="offline", run_dir=tmp_path, config=CONFIG, rank=1)
        disabled = Tracker.create(
            project="p", run_dir=tmp_path, config=CONFIG, env={"WANDB_MODE": "disabled"}
        )
    assert type(other_rank) is Tracker and type(disabled) is Tracker
    assert not (tmp_path / "wandb").exists()


# ----------------------------------------------------------------------------- offline run, read back


def test_offline_run_records_config_ticks_metrics_images_and_summary(tmp_path: Path, wandb_env: Path) -> None:
    run_dir = _run_dir(tmp_path)
    grid = run_dir / "fakes000008.png"
    Image.fromarray(np.arange(24 * 40 * 3, dtype=np.uint8).reshape(24, 40, 3)).save(grid)

    tracker = Tracker.create(project="ada-tests", run_dir=run_dir, config=CONFIG)
    assert tracker.enabled
    for stats in TICKS:
        tracker.log_tick(stats)
    tracker.log_metric(4.0, {"fid50k_full": 31.5})
    tracker.log_metric(8.0, {"fid50k_full": 27.25})
    tracker.log_metric(8.0, {"pr50k3_full_precision": 0.4, "pr50k3_full_recall": 0.125})
    tracker.log_image(8.0, "fakes", grid)
    tracker.finish()
    assert not tracker.enabled

    run = wandb_run_contents(wandb_env)
    # identity: group = dataset name, name = run dir name
    assert run["run"].project == "ada-tests"
    assert run["run"].run_group == "faces-32"
    assert run["run"].display_name == "00007-faces-32-ada"
    # the whole resolved config, flattened, plus the derived keys
    config = run["config"]
    for key, value in flatten_config(CONFIG).items():
        assert config[key] == value, key
    assert config["dataset"] == "faces-32" and config["resumed"] is False
    # every key uses kimg as its x-axis
    assert any(m.glob_name == "*" and m.step_metric == "kimg" for m in run["metrics"])

    history = run["history"]
    ticks = [row for row in history if "train/tick" in row]
    assert len(ticks) == len(TICKS)
    for row, stats in zip(ticks, TICKS, strict=True):
        assert row["kimg"] == stats["kimg"]
        expected = {f"train/{k}" for k, v in stats.items() if k != "kimg" and isinstance(v, int | float)}
        assert {k for k in row if k.startswith("train/")} == expected
        for key in expected:
            value = stats[key.removeprefix("train/")]
            if math.isnan(value):
                assert math.isnan(float(row[key]))
            else:
                assert row[key] == pytest.approx(value)
    assert ticks[1]["train/extra_new_key"] == 7  # unknown keys are logged too

    metrics = [row for row in history if any(k.startswith("metrics/") for k in row)]
    assert [(row["kimg"], row.get("metrics/fid50k_full")) for row in metrics] == [
        (4.0, 31.5),
        (8.0, 27.25),
        (8.0, None),
    ]
    assert metrics[2]["metrics/pr50k3_full_recall"] == 0.125

    images = [row for row in history if "images/fakes" in row]
    assert len(images) == 1 and images[0]["kimg"] == 8.0
    assert (images[0]["images/fakes"]["width"], images[0]["images/fakes"]["height"]) == (40, 24)
    media = list(run["run_dir"].glob("files/media/images/**/*.png"))
    assert len(media) == 1
    with Image.open(media[0]) as saved, Image.open(grid) as original:
        assert np.array_equal(np.asarray(saved), np.asarray(original))

    summary = run["summary"]
    assert summary["best/fid50k_full"] == 27.25 and summary["best/fid50k_full_kimg"] == 8.0
    assert summary["final/fid50k_full"] == 27.25
    assert summary["best/pr50k3_full_precision"] == 0.4 and summary["final/pr50k3_full_recall"] == 0.125
    assert summary["train/p"] == pytest.approx(TICKS[-1]["p"])
    assert run["exit"] is not None and run["exit"].exit_code == 0


def test_settings_come_from_wandb_environment_variables(tmp_path: Path, wandb_env: Path) -> None:
    env = {
        "WANDB_PROJECT": "from-env",
        "WANDB_RUN_GROUP": "my-group",
        "WANDB_NAME": "my-name",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_env),
    }
    with Tracker.create(run_dir=_run_dir(tmp_path), config=CONFIG, env=env) as tracker:
        assert tracker.enabled
        tracker.log_tick(TICKS[1])
    run = wandb_run_contents(wandb_env)
    assert (run["run"].project, run["run"].run_group, run["run"].display_name) == (
        "from-env",
        "my-group",
        "my-name",
    )
    assert [row["train/loss_G"] for row in run["history"] if "train/loss_G" in row] == [TICKS[1]["loss_G"]]


# ----------------------------------------------------------------------------- failures never stop training


def _training_calls(tracker: Tracker, grid: Path) -> None:
    for stats in TICKS:
        tracker.log_tick(stats)
    tracker.log_metric(4.0, {"fid50k_full": 30.0})
    tracker.log_image(4.0, "fakes", grid)
    tracker.finish(exit_code=0)


def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.png"
    Image.new("RGB", (8, 8)).save(path)
    return path


def test_misconfigured_mode_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    with pytest.warns(TrackingWarning) as caught:
        tracker = Tracker.create(project="p", mode="ofline", run_dir=tmp_path, config=CONFIG)
        _training_calls(tracker, _grid(tmp_path))
    assert len(caught) == 1
    assert "'ofline'" in str(caught[0].message) and "training goes on" in str(caught[0].message)
    assert not tracker.enabled


def test_wandb_init_failure_warns_once_and_training_goes_on(
    tmp_path: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    def unreachable(**kwargs: Any) -> Any:
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    with pytest.warns(TrackingWarning) as caught:
        tracker = Tracker.create(project="p", run_dir=tmp_path, config=CONFIG)
        _training_calls(tracker, _grid(tmp_path))
    assert len(caught) == 1
    assert "ConnectionError" in str(caught[0].message) and "unreachable" in str(caught[0].message)
    assert not tracker.enabled


def test_online_mode_without_api_key_warns_once_and_never_starts_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    asked: list[float] = []

    def no_key(timeout: float, verify: bool) -> bool:
        asked.append(timeout)
        return False  # what wandb.login returns when its key prompt times out

    def must_not_start(**kwargs: Any) -> Any:
        raise AssertionError("wandb.init called without a login")

    monkeypatch.setattr(wandb, "login", no_key)
    monkeypatch.setattr(wandb, "init", must_not_start)
    with pytest.warns(TrackingWarning) as caught:
        tracker = Tracker.create(project="p", mode="online", run_dir=tmp_path, config=CONFIG)
        _training_calls(tracker, _grid(tmp_path))
    assert len(caught) == 1 and "WANDB_API_KEY" in str(caught[0].message)
    assert asked == [tracking.LOGIN_TIMEOUT_S]
    assert not tracker.enabled


class FlakyRun:
    """Stands in for a wandb run whose service dies after the first row."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.finished_with: int | None = None
        self.summary: dict[str, Any] = {}

    def define_metric(self, name: str, **kwargs: Any) -> None:
        pass

    def log(self, row: dict[str, Any]) -> None:
        if self.rows:
            raise BrokenPipeError("wandb service went away")
        self.rows.append(row)

    def finish(self, exit_code: int = 0) -> None:
        self.finished_with = exit_code


def test_failure_during_the_run_warns_once_then_tracker_is_a_noop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    run = FlakyRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    tracker = Tracker.create(project="p", mode="offline", run_dir=tmp_path, config=CONFIG)
    with pytest.warns(TrackingWarning) as caught:
        _training_calls(tracker, _grid(tmp_path))
    assert len(caught) == 1 and "BrokenPipeError" in str(caught[0].message)
    assert len(run.rows) == 1 and run.rows[0]["kimg"] == 0.0
    assert run.finished_with is None  # a broken service is not called again
    assert not tracker.enabled


def test_context_manager_finishes_with_exit_code_1_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    run = FlakyRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    with pytest.raises(RuntimeError, match="training crashed"):
        with Tracker.create(project="p", mode="offline", run_dir=tmp_path, config=CONFIG) as tracker:
            tracker.log_metric(4.0, {"fid50k_full": 9.0})
            raise RuntimeError("training crashed")
    assert run.finished_with == 1
    assert run.summary["best/fid50k_full"] == 9.0


def test_large_grids_are_downscaled_before_upload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    logged: list[dict[str, Any]] = []

    class Run(FlakyRun):
        def log(self, row: dict[str, Any]) -> None:
            logged.append(row)

    monkeypatch.setattr(wandb, "init", lambda **kwargs: Run())
    monkeypatch.setattr(tracking, "MAX_IMAGE_SIDE", 16)
    grid = tmp_path / "big.png"
    Image.new("RGB", (64, 32), (200, 10, 10)).save(grid)
    tracker = Tracker.create(project="p", mode="offline", run_dir=tmp_path, config=CONFIG)
    tracker.log_image(4.0, "fakes", grid)
    picture = logged[0]["images/fakes"]
    assert (picture._width, picture._height) == (16, 8)


# ----------------------------------------------------------------------------- console


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_off_a_terminal_and_draws_on_one() -> None:
    quiet = io.StringIO()
    assert list(progress(range(5), desc="features", file=quiet)) == [0, 1, 2, 3, 4]
    assert quiet.getvalue() == ""

    loud = FakeTTY()
    assert list(progress(range(5), desc="features", file=loud)) == [0, 1, 2, 3, 4]
    assert "features" in loud.getvalue() and "/5 " in loud.getvalue()

    forced_off = FakeTTY()
    bar = progress(total=3, desc="convert", file=forced_off, enabled=False)
    bar.update(3)
    bar.close()
    assert forced_off.getvalue() == ""


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 185, 7620, 273600)] == [
        "0s",
        "42s",
        "3m 05s",
        "2h 07m",
        "3d 04h",
    ]


def test_format_tick_is_one_line_with_values_and_without_nulls() -> None:
    line = format_tick(TICKS[2], elapsed_s=185)
    assert "\n" not in line
    assert line.startswith("tick 2 ")
    for text in (
        "kimg 8.0",
        "3m 05s",
        "sec/kimg 2.50",
        "G 1.050",
        "D 1.100",
        "p 0.020",
        "r_t 0.580",
        "r_v 0.200",
        "skipped 1",
    ):
        assert text in line, text
    assert "gpu" not in line and "None" not in line
    first = format_tick(TICKS[0])
    assert "r_t" not in first and "skipped" not in first


# ----------------------------------------------------------------------------- through training


def test_a_training_run_logs_its_config_and_ticks_to_wandb(tmp_path: Path, wandb_env: Path) -> None:
    from ada.cli import main

    main(["train", "--cfg", "tiny", "--data", "lfw-faces16", "--aug", "fixed", "--p", "0.2", "--kimg", "0.048",
          "--tick", "0.032", "--outdir", str(tmp_path / "runs"), "--wandb-project", "ada-e2e", "--metrics", "none"])
    run_dir = next((tmp_path / "runs").iterdir())
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    run = wandb_run_contents(wandb_env)
    assert run["run"].project == "ada-e2e" and run["run"].run_group == "lfw-faces16"
    assert run["config"]["aug.mode"] == "fixed" and run["config"]["aug.p"] == 0.2
    ticks = [row for row in run["history"] if "train/loss_G" in row]
    assert [row["kimg"] for row in ticks] == [s["kimg"] for s in stats]
    assert [row["train/p"] for row in ticks] == [s["p"] for s in stats]
    assert any(key.startswith("images/") for row in run["history"] for key in row)
