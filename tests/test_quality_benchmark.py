"""benchmarks/quality.py's parts on small inputs, and one tiny end-to-end run of the script."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ada.builtin import digits
from ada.cli import main
from ada.data import open_dataset
from tests.test_benchmarks import BENCHMARKS, REPO


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("quality"), importlib.import_module("digit_classifier")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def trained(bench):
    """A classifier trained briefly: enough to read real digits well."""
    _, clf = bench
    images, labels = digits(16)
    torch.manual_seed(0)
    model, accuracy = clf.train_classifier(images, labels, epochs=6)
    return torch.jit.script(model), accuracy


def test_classifier_learns_digits_and_rejects_blobs(bench, trained):
    _, clf = bench
    net, accuracy = trained
    assert accuracy > 0.85
    images, labels = digits(16)
    gen = torch.Generator().manual_seed(5)
    others = clf.non_digits(torch.from_numpy(images[:100]).float(), torch.from_numpy(labels[:100]), 200, gen)
    assert others.shape == (200, 1, 16, 16) and 0 <= others.min() and others.max() <= 255
    with torch.no_grad():
        called_other = net(others.repeat(1, 3, 1, 1)).argmax(1) == clf.OTHER
        features = net(torch.from_numpy(images[:5]).repeat(1, 3, 1, 1), return_features=True)
    assert called_other.float().mean() > 0.7  # chance is 1 in 11
    assert features.shape == (5, clf.FEATURE_DIM)


def test_scores_tell_real_digits_from_a_collapsed_generator(bench, trained):
    quality, _ = bench
    net, _ = trained
    images, _ = digits(16)
    feats = net(torch.from_numpy(images).repeat(1, 3, 1, 1), return_features=True).detach().double().numpy()
    from metrics import formulas

    train_idx = np.arange(0, 1797, 2)
    reference = {
        "features": feats, "mean_cov": formulas.mean_cov(feats),
        "train_pixels": torch.from_numpy(images[train_idx]).double() / 255,
        "heldout_pixels": torch.from_numpy(images[1::2]).double() / 255,
    }
    real = quality.score_images(torch.from_numpy(images[1::2][:400]), net, reference)
    copies = quality.score_images(torch.from_numpy(images[train_idx][:400]), net, reference)
    collapsed = quality.score_images(torch.from_numpy(images[:1]).repeat(400, 1, 1, 1), net, reference)
    assert real["classes"] == 10 and collapsed["classes"] == 1
    assert real["entropy"] > 3.1 and collapsed["entropy"] == 0  # log2(10) = 3.32 for an even spread
    assert collapsed["fid"] > 10 * real["fid"]
    assert collapsed["div"] < 0.05 < 0.8 < real["div"]
    assert copies["nn"] == pytest.approx(0, abs=1e-6) and real["nn"] == pytest.approx(1, abs=0.1)
    assert real["legible"] > 0.5  # a briefly trained classifier; the benchmark's reads 99% of real digits


def test_subsets_are_seeded_and_written_as_a_labelled_folder(bench, tmp_path):
    quality, _ = bench
    a, b = quality.subset_indices(50, 0, 1797), quality.subset_indices(50, 0, 1797)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 50
    assert not np.array_equal(a, quality.subset_indices(50, 1, 1797))
    images, labels = digits(16)
    quality.write_subset(tmp_path / "d", images, labels, a)
    ds = open_dataset(str(tmp_path / "d"), cond=True)
    assert len(ds) == 50 and ds.c_dim == 10
    assert np.array_equal(np.sort(ds.images.reshape(50, -1), axis=0), np.sort(images[a].reshape(50, -1), axis=0))


def test_table_lists_runs_by_kimg(bench):
    quality, _ = bench
    records = [{"run": r, "kimg": k, "fid": f} for r, k, f in
               [("n1-a", 0.016, 9.0), ("n1-a", 10.0, 5.0), ("n1-b", 10.0, 7.5), ("n1-a", 20.0, 4.0)]]
    lines = quality.table(records, "fid", "{:.1f}").splitlines()
    assert lines[0].split() == ["fid", "10", "20"]
    assert lines[1].split() == ["n1-a", "5.0", "4.0"] and lines[2].split() == ["n1-b", "7.5", "-"]


@pytest.mark.parametrize(
    "name", ["ada", "published", "fast", "noaug", "fixed", "lecam", "diffaug", "apa", "ada-cutout"]
)
def test_every_named_run_is_a_valid_training(bench, name, tmp_path, capsys):
    quality, _ = bench
    main(["train", "--cfg", "cpu", "--data", "digits", "-n", "--outdir", str(tmp_path), *quality.RUNS[name]])
    assert "nothing written" in capsys.readouterr().out


def test_script_end_to_end_is_reproducible(tmp_path):
    def run(out):
        command = [sys.executable, str(BENCHMARKS / "quality.py"), "--n", "24", "--cfg", "tiny", "--runs", "noaug",
                   "--run", "fast=--aug=ada --ada-kimg=0.1", "--kimg", "0.032", "--every", "0.032",
                   "--tick", "0.016", "--samples", "64", "--classifier-epochs", "1", "--jobs", "2",
                   "--out", str(out)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout, json.loads((out / "results.json").read_text())

    stdout, first = run(tmp_path / "a")
    assert "held-out accuracy" in stdout and "n24-noaug" in stdout and "n24-fast" in stdout
    assert (tmp_path / "a" / "quality.png").stat().st_size > 0
    assert {r["run"] for r in first["records"]} == {"n24-noaug", "n24-fast"}
    assert list((tmp_path / "a" / "grids").glob("n24-fast-kimg*.png"))
    _, second = run(tmp_path / "b")
    assert second["records"] == first["records"]
    # An interrupted run continues from its newest snapshot, to the same numbers.
    run_dir = next((tmp_path / "b" / "runs" / "n24-noaug").glob("0*"))
    snapshots = sorted(run_dir.glob("network-snapshot-*.pt"))
    assert len(snapshots) == 2  # tick 0 and 0.032 kimg
    for path in (run_dir / "done", run_dir / "scores.json", snapshots[-1]):
        path.unlink()
    _, third = run(tmp_path / "b")
    assert "--resume" in (run_dir / "done").read_text()
    assert third["records"] == first["records"]
