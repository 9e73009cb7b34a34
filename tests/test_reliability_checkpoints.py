"""Damaged checkpoints and network pickles: refused in one line before any network is built.

Our checkpoints are checked for structure (keys, types, network arguments, tensor shapes, finite
values) before anything is built from them; the message names the damaged file and the previous
snapshot of its run. Official pickles with damaged constructor arguments (negative or absurd
dimensions) are refused without allocating what they ask for.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import ada.checkpoint
import ada.checkpoint_checks
from ada import official
from ada.checkpoint import load_checkpoint, load_generator, save_checkpoint
from ada.cli import main
from ada.errors import UserError
from ada.files import LOCK_NAME
from tests._official_fixture import write_official
from tests.test_official_import import G_KWARGS, make_snapshot
from tests.test_reliability_inputs import cli_error

GOOD = "network-snapshot-000000.pt"
DAMAGED = "network-snapshot-000004.pt"


def set_in(*keys_and_value) -> Callable[[dict], None]:
    *keys, value = keys_and_value

    def change(ckpt: dict) -> None:
        node = ckpt
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value

    return change


def delete(key: str) -> Callable[[dict], None]:
    return lambda ckpt: ckpt.pop(key)


def first_tensor(ckpt: dict, net: str) -> str:
    return next(iter(ckpt[net]))


def reshape_first(net: str) -> Callable[[dict], None]:
    def change(ckpt: dict) -> None:
        name = first_tensor(ckpt, net)
        ckpt[net][name] = torch.zeros([3, 5, 7])

    return change


def nan_in(net: str) -> Callable[[dict], None]:
    def change(ckpt: dict) -> None:
        name = first_tensor(ckpt, net)
        ckpt[net][name] = torch.full_like(ckpt[net][name], float("nan"))

    return change


def wrong_moment_shape(ckpt: dict) -> None:
    ckpt["opt_G"]["state"][0]["exp_avg"] = torch.zeros([2, 2, 2])


DAMAGES = {
    "no-G_kwargs": (delete("G_kwargs"), "it has no 'G_kwargs'"),
    "no-rng": (delete("rng"), "it has no 'rng'"),
    "no-dataset": (delete("dataset"), "it has no 'dataset'"),
    "G_kwargs-text": (set_in("G_kwargs", "z_dim=8"), "its 'G_kwargs' is a str, not a dict"),
    "unknown-kwarg": (set_in("G_kwargs", "colour", 3), "G_kwargs do not describe a network: TypeError"),
    "negative-dimension": (set_in("G_kwargs", "z_dim", -5), "G_kwargs do not describe a network: z_dim=-5"),
    "bad-resolution": (set_in("D_kwargs", "img_resolution", 7), "resolution 7 is not a power of two"),
    "absurd-dimension": (set_in("G_kwargs", "z_dim", 10**12), "more than the 268,435,456 any real network has"),
    "unknown-mapping-activation": (set_in("G_kwargs", "mapping_kwargs", {"num_layers": 2, "activation": "bogus"}),
                                   "unknown activation 'bogus'"),
    # Only a forward pass reaches this one.
    "unknown-synthesis-activation": (set_in("G_kwargs", "synthesis_kwargs", "activation", "bogus"),
                                     "it cannot run (ValueError: unknown activation 'bogus')"),
    "tensor-shape": (reshape_first("G_ema"),
                     "G_ema: synthesis.b4.const has shape (3, 5, 7), its arguments give (16, 4, 4)"),
    "non-finite-weights": (nan_in("D"), "non-finite values"),
    "non-finite-G_ema": (nan_in("G_ema"), "G_ema: synthesis.b4.const holds non-finite values"),
    "G-tensor-shape": (reshape_first("G"), "G: synthesis.b4.const has shape (3, 5, 7), its arguments give (16, 4, 4)"),
    "progress-text": (set_in("progress", "cur_nimg", "12"), "progress counters"),
    "rng-empty": (set_in("rng", "torch", []), "random number generator states"),
    "p-out-of-range": (set_in("controller", "p", 5.0), "p=5.0 is outside [0, 1]"),
    "p_apa-out-of-range": (set_in("apa_controller", {"p": -0.5, "sign_sum": 0.0, "sign_count": 0.0}),
                           "its APA probability p_apa=-0.5 is outside [0, 1]"),
    "apa-controller-text": (set_in("apa_controller", "p=0.2"), "its APA controller state is not numbers"),
    "lecam-nan": (set_in("lecam", {"ema": torch.tensor([float("nan"), 0.0]), "steps": 3}), "its LeCam anchors"),
    "lecam-steps": (set_in("lecam", {"ema": torch.zeros(2), "steps": -1}), "its LeCam anchors"),
    "adam-moment-shape": (wrong_moment_shape, "opt_G: its exp_avg of parameter 0"),
}
# The damages that the tools (generate, project, video, style mixing, metrics) refuse too: they read only
# G_kwargs and G_ema. Damage anywhere else matters to a resume alone.
GENERATOR_DAMAGES = {
    "no-G_kwargs", "G_kwargs-text", "unknown-kwarg", "negative-dimension", "absurd-dimension",
    "unknown-mapping-activation", "unknown-synthesis-activation", "tensor-shape", "non-finite-G_ema",
}


@pytest.fixture
def run_with_damage(small_checkpoint, tmp_path) -> Callable[[Callable[[dict], None]], Path]:
    """A run directory holding a good snapshot and, newer, a damaged copy of it."""

    def make(change: Callable[[dict], None]) -> Path:
        run = tmp_path / "run"
        run.mkdir()
        shutil.copy(small_checkpoint, run / GOOD)
        ckpt = torch.load(small_checkpoint, weights_only=True)
        change(ckpt)
        torch.save(ckpt, run / DAMAGED)
        return run

    return make


def resume_args(small_checkpoint: Path, spec: Path, tmp_path: Path) -> list[str]:
    """Resume on the checkpoint's own data, so that the whole training state is restored. A run
    directory is continued from its own options (a different --outdir would be refused first)."""
    if spec.is_dir():
        return ["train", "--resume", str(spec), "--kimg", "0.008"]
    return ["train", "--cfg", "tiny", "--data", str(small_checkpoint.parent.parent / "data"), "--aug", "noaug",
            "--batch", "4", "--val", "0", "--kimg", "0.008", "--outdir", str(tmp_path / "runs"), "--resume", str(spec)]


@pytest.mark.parametrize("name", DAMAGES)
def test_damaged_checkpoints_are_refused_naming_the_file_and_the_previous_snapshot(
    name, run_with_damage, small_checkpoint, tmp_path, capsys
):
    change, detail = DAMAGES[name]
    run = run_with_damage(change)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    expected = [f"{run / DAMAGED} is a damaged checkpoint", detail, f"use the previous snapshot {run / GOOD}"]
    generate = ["generate", "--network", str(run), "--seeds", "0", "--outdir", str(tmp_path / "gen")]
    if name in GENERATOR_DAMAGES:
        cli_error(capsys, generate, *expected)
        assert not (tmp_path / "gen").exists()
    else:  # G_ema is intact: the newest snapshot generates
        main(generate)
        assert (tmp_path / "gen" / "seed0000.png").is_file()
    cli_error(capsys, resume_args(small_checkpoint, run, tmp_path), *expected)
    # The run directory is untouched: at most its lock file (taken before a continued run's snapshot is
    # read, and left behind by every run) is new.
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME} == before
    assert not (tmp_path / "runs").exists()


def test_a_cut_checkpoint_is_called_damaged_not_a_network_pickle(small_checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(small_checkpoint, run / GOOD)
    raw = small_checkpoint.read_bytes()
    for cut in (len(raw) // 2, 100, 0):
        (run / DAMAGED).write_bytes(raw[:cut])
        line = cli_error(capsys, ["generate", "--network", str(run / DAMAGED), "--seeds", "0",
                                  "--outdir", str(tmp_path / "gen")],
                         f"{run / DAMAGED} is a damaged checkpoint", f"use the previous snapshot {run / GOOD}")
        assert "pickle" not in line


def test_the_weights_only_refusal_is_a_whole_sentence(small_checkpoint, tmp_path, capsys):
    ckpt = torch.load(small_checkpoint, weights_only=True)
    ckpt["G_ema"] = shutil.copy  # any Python object that is not plain data
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path)
    line = cli_error(capsys, ["generate", "--network", str(path), "--seeds", "0", "--outdir", str(tmp_path / "gen")])
    assert line == (
        f"error: refused to load {path}: it holds the Python object shutil.copy, which a checkpoint never "
        "contains (nothing of it was run)"
    )


def test_a_good_checkpoint_still_loads(small_checkpoint):
    """The checks refuse damage, not our own snapshots."""
    assert load_checkpoint(small_checkpoint)["progress"]["cur_nimg"] == 4


def test_a_generator_only_checkpoint_serves_the_tools_but_not_a_resume(small_checkpoint, tmp_path, capsys,
                                                                      monkeypatch):
    """G_kwargs and G_ema are all `load_generator` needs and checks: D is not planned on the meta device."""
    full = torch.load(small_checkpoint, weights_only=True)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / GOOD, {"G_kwargs": full["G_kwargs"], "G_ema": full["G_ema"]})
    planned = []
    real_planned_state = ada.checkpoint_checks.planned_state
    monkeypatch.setattr(ada.checkpoint_checks, "planned_state",
                        lambda cls, kwargs: planned.append(cls.__name__) or real_planned_state(cls, kwargs))
    G = load_generator(str(run))  # a run directory whose snapshot records no progress: by its name
    assert planned == ["Generator"]
    assert torch.equal(G.state_dict()["synthesis.b4.const"], full["G_ema"]["synthesis.b4.const"])
    cli_error(capsys, resume_args(small_checkpoint, run / GOOD, tmp_path), f"{run / GOOD} is a damaged checkpoint",
              "it has no 'D_kwargs'")


@pytest.mark.parametrize(
    ("z_dim", "pattern"),
    [(-5, "z_dim=-5 is a negative dimension"), (10**12, "more than the 268,435,456 any real network has")],
    ids=["negative", "70-TB"],
)
def test_official_pickles_with_damaged_dimensions_are_refused_without_allocating(
    tmp_path, official_names, z_dim, pattern
):
    snap = make_snapshot(0)
    damaged = dict(G_KWARGS, c_dim=0, z_dim=z_dim)
    path = write_official(tmp_path / "snap.pkl", snap, official_names, init_kwargs={id(snap["G"]): damaged})
    with pytest.raises(UserError, match=f"official G was built with arguments .*{pattern}"):
        official.load_official_pickle(path)
