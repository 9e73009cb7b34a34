"""Metrics wired into the product: `ada metrics` and `--metrics` during training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from ada.cli import main
from ada.files import read_jsonl
from tests.conftest import REPO

TINY = ["--cfg", "tiny", "--data", "lfw-faces16", "--aug", "noaug", "--tick", "0.032", "--snap", "100"]


class TinyFeatures(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3)), x[:, :, ::4, ::4].flatten(1)], dim=1)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "features.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    return path


@pytest.fixture(scope="module")
def run_with_metrics(tmp_path_factory, features):
    outdir = tmp_path_factory.mktemp("runs")
    main(["train", *TINY, "--kimg", "0.048", "--outdir", str(outdir), "--metrics", "fid200,kid200",
          "--features", str(features)])
    return sorted(outdir.iterdir())[-1]


def test_training_writes_metric_files_at_snapshots(run_with_metrics):
    fid = read_jsonl(run_with_metrics / "metric-fid200.jsonl")
    kid = read_jsonl(run_with_metrics / "metric-kid200.jsonl")
    assert [r["kimg"] for r in fid] == pytest.approx([0.016, 0.048])  # tick 0 and the final snapshot
    assert all(r["results"]["fid200"] > 0 for r in fid)
    assert "kid200" in kid[-1]["results"]
    assert [r["snapshot"] for r in fid] == ["network-snapshot-000000.pt", "network-snapshot-000000_048.pt"]


def test_ada_metrics_command_with_features(run_with_metrics, features, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADA_CACHE_DIR", str(tmp_path / "cache"))
    main(["metrics", "--network", str(run_with_metrics), "--data", "lfw-faces16", "--metrics", "fid100",
          "--features", str(features)])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["metric"] == "fid100" and line["results"]["fid100"] > 0
    # The snapshot belongs to a run: the result joins the run's metric files.
    assert read_jsonl(run_with_metrics / "metric-fid100.jsonl")[-1]["results"] == line["results"]


def test_without_inception_weights_training_goes_on_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADA_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("ADA_INCEPTION_WEIGHTS", raising=False)
    main(["train", *TINY, "--kimg", "0.032", "--outdir", str(tmp_path / "runs"), "--metrics", "fid200"])
    out = capsys.readouterr().out
    assert out.count("fid200 off:") == 1
    run_dir = next((tmp_path / "runs").iterdir())
    assert not list(run_dir.glob("metric-*.jsonl"))
    assert read_jsonl(run_dir / "stats.jsonl")[-1]["kimg"] == pytest.approx(0.032)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--metrics", "fid50x"], "fid50x"),
        (["--features", "/nonexistent.pt"], "nonexistent.pt"),
    ],
)
def test_ada_metrics_bad_input(run_with_metrics, features, extra, pattern):
    args = ["--network", str(run_with_metrics), "--data", "lfw-faces16", "--features", str(features), *extra]
    result = subprocess.run([sys.executable, "-m", "ada", "metrics", *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error:") and pattern in result.stderr


def test_ada_metrics_resolution_mismatch(run_with_metrics, features):
    result = subprocess.run(
        [sys.executable, "-m", "ada", "metrics", "--network", str(run_with_metrics), "--data", "lfw-faces",
         "--metrics", "fid100", "--features", str(features)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "32" in result.stderr and "16" in result.stderr
