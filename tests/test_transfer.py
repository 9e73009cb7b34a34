"""Transfer learning: Freeze-D, fine-tuning from our checkpoints and official pickles, resuming, generating.

Runs are tiny (the `tiny` preset at 16 px, batch 4, one or two steps), so every check here is about
what is loaded, frozen, continued and written, never about image quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ada.build import build_networks
from ada.checkpoint import load_checkpoint
from ada.cli import main
from ada.config import load_preset
from ada.controller import ADA_KIMG, ADA_KIMG_TRANSFER
from ada.distributed import DistContext
from ada.files import read_jsonl
from ada.generate import parse_seeds, seed_to_z
from ada.images import to_uint8
from ada.launch import resolve_config, split_dataset
from ada.networks import Generator
from ada.training import TickStats, Trainer
from tests._official_fixture import AugmentPipe, write_official
from tests.conftest import write_images

BATCH = 4
TRAIN = ["train", "--cfg", "tiny", "--aug", "noaug", "--batch", str(BATCH), "--tick", "0.004"]


def train(outdir: Path, *extra: str) -> Path:
    """A CLI run; returns the run directory it wrote."""
    before = set(outdir.iterdir()) if outdir.exists() else set()
    main([*TRAIN, "--outdir", str(outdir), *extra])
    (run,) = set(outdir.iterdir()) - before
    return run


def make_trainer(data: str, **overrides) -> Trainer:
    cfg, dataset = resolve_config("tiny", {"data": data, "aug": {"mode": "noaug"}, "batch": BATCH, **overrides})
    train_set, val_set = split_dataset(cfg, dataset)
    return Trainer(cfg, train_set, val_set, DistContext(), log=lambda message: None)


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI expecting a user error: exit code 1 and exactly one line on stderr."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def snapshot_of(run: Path) -> Path:
    (snap,) = sorted(run.glob("network-snapshot-*.pt"))
    return snap


def assert_same_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    assert sorted(own) == sorted(state)
    for name, tensor in state.items():
        assert torch.equal(own[name].cpu(), tensor.cpu()), name


def listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> str:
    """12 grayscale 16x16 images (few, so that the sample grids are small too)."""
    folder = tmp_path_factory.mktemp("data") / "faces"
    write_images(folder, 12, 16, mode="L", seed=0)
    return str(folder)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """Another 16x16 grayscale dataset: a folder with its own name."""
    folder = tmp_path_factory.mktemp("other") / "portraits"
    write_images(folder, 12, 16, mode="L", seed=5)
    return folder


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, faces) -> Path:
    """One step of 4 images: one tick, one snapshot."""
    return train(tmp_path_factory.mktemp("base"), "--data", faces, "--kimg", "0.004")


def official_snapshot(c_dim: int = 0, resolution: int = 16, seed: int = 1) -> dict:
    """Networks of the `tiny` architecture, as an official snapshot dict; noise and w_avg made visible."""
    torch.manual_seed(seed)
    G, D = build_networks(load_preset("tiny"), resolution, 1, c_dim)
    G_ema, _ = build_networks(load_preset("tiny"), resolution, 1, c_dim)
    for net in (G, G_ema):
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith(("noise_strength", "w_avg", "noise_const")):
                tensor.data.normal_(0, 0.5)
    return dict(G=G.eval(), D=D.eval(), G_ema=G_ema.eval(), augment_pipe=AugmentPipe(0.25),
                training_set_kwargs={"resolution": resolution})


# ----- Freeze-D -----


def test_freezed_layers_stay_bit_identical_and_the_rest_trains(faces):
    # N = 3 ends inside the 16 px block: its fromrgb, conv0 and conv1 freeze, its skip conv trains.
    n = 3
    trainer = make_trainer(faces, freezed=n)
    layers = trainer.D.layer_modules()
    assert len(layers) == 7  # 16 px resnet: b16 fromrgb, conv0, conv1, skip; b8 conv0, conv1, skip
    frozen = {id(p) for layer in layers[:n] for p in layer.parameters()}
    assert len(frozen) == 6  # their weights and biases
    before = {name: p.detach().clone() for name, p in trainer.D.named_parameters()}
    g_before = {name: p.detach().clone() for name, p in trainer.G.named_parameters()}
    for _ in range(2):
        trainer.train_step(TickStats())
    for name, p in trainer.D.named_parameters():
        if id(p) in frozen:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
    opt_D = next(phase.opt for phase in trainer.phases if phase.name == "Dmain")
    optimised = {id(p) for group in opt_D.param_groups for p in group["params"]}
    assert optimised.isdisjoint(frozen) and len(optimised) == len(before) - len(frozen)
    assert all(not torch.equal(p, g_before[name]) for name, p in trainer.G.named_parameters())  # G trains as usual


def test_freezed_beyond_the_depth_of_D_is_one_clear_line(faces, tmp_path, capsys):
    line = cli_error(capsys, *TRAIN, "--data", faces, "--freezed", "8", "--outdir", str(tmp_path / "o"))
    assert "--freezed=8" in line and "7 layers" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ----- resuming and fine-tuning from our own checkpoints -----


def test_resume_on_the_same_data_continues_with_the_saved_state(base_run, faces):
    ckpt = load_checkpoint(snapshot_of(base_run))
    trainer = make_trainer(faces, resume=str(base_run))  # a run directory means its latest snapshot
    assert not trainer.transfer
    assert trainer.progress.cur_nimg == ckpt["progress"]["cur_nimg"] == 4
    assert trainer.progress.batch_idx == 1
    assert trainer.controller.ada_kimg == ADA_KIMG == 500
    for module, key in ((trainer.G, "G"), (trainer.D, "D"), (trainer.G_ema, "G_ema")):
        assert_same_state(module, ckpt[key])
    opts = {"opt_G": trainer.phases[0].opt, "opt_D": next(p.opt for p in trainer.phases if p.name == "Dmain")}
    for key, opt in opts.items():
        state, saved = opt.state_dict(), ckpt[key]
        assert state["param_groups"] == saved["param_groups"]
        assert sorted(state["state"]) == sorted(saved["state"]) and saved["state"]
        for idx, tensors in saved["state"].items():
            for name, tensor in tensors.items():
                assert torch.equal(state["state"][idx][name], tensor), (key, idx, name)
    assert trainer.controller.state_dict() == ckpt["controller"]
    assert torch.equal(trainer.loss.pl_mean, ckpt["pl_mean"])


def test_fine_tune_on_other_data_takes_the_weights_and_starts_fresh(base_run, other_data):
    snapshot = snapshot_of(base_run)
    ckpt = load_checkpoint(snapshot)
    trainer = make_trainer(str(other_data), resume=str(snapshot))
    assert trainer.transfer
    assert trainer.progress.cur_nimg == 0 and trainer.progress.batch_idx == 0
    # The faster ADA reaction of transfer runs.
    assert trainer.controller.ada_kimg == ADA_KIMG_TRANSFER == 100
    assert trainer.controller.p == 0
    for module, key in ((trainer.G, "G"), (trainer.D, "D"), (trainer.G_ema, "G_ema")):
        assert_same_state(module, ckpt[key])
    assert all(not phase.opt.state_dict()["state"] for phase in trainer.phases)  # fresh optimisers


def test_fine_tune_through_the_cli_writes_a_new_run_and_leaves_the_source_alone(base_run, other_data, tmp_path):
    before = listing(base_run)
    stats_before = (base_run / "stats.jsonl").read_text()
    run = train(tmp_path / "runs", "--data", str(other_data), "--kimg", "0.004", "--resume", str(snapshot_of(base_run)))
    assert run.parent == tmp_path / "runs" and run.name.startswith("00000-portraits-") and "resume" in run.name
    ckpt = load_checkpoint(snapshot_of(run))
    assert ckpt["progress"]["cur_nimg"] == 4  # started at 0 kimg, not at the source's 0.004
    assert ckpt["dataset"]["name"] == "portraits"
    assert [s["kimg"] for s in read_jsonl(run / "stats.jsonl")] == [0.004]
    assert (run / "reals.png").is_file() and (run / "fakes_init.png").is_file()
    assert listing(base_run) == before and (base_run / "stats.jsonl").read_text() == stats_before


def test_checkpoint_and_data_of_other_size_or_channels_is_one_clear_line(base_run, tmp_path, capsys):
    rgb = tmp_path / "rgb"
    write_images(rgb, 8, 16, mode="RGB")
    snapshot = str(snapshot_of(base_run))
    line = cli_error(capsys, *TRAIN, "--data", str(rgb), "--resume", snapshot, "--outdir", str(tmp_path / "o"))
    # The fix for other channels is a channel conversion, not another resolution.
    assert "16x16x1" in line and "16x16x3" in line and "ada dataset" in line and "--channels 1" in line
    assert "--resolution" not in line
    big = tmp_path / "big"
    write_images(big, 8, 32, mode="L")
    line = cli_error(capsys, *TRAIN, "--data", str(big), "--resume", snapshot, "--outdir", str(tmp_path / "o"))
    assert "16x16x1" in line and "32x32x1" in line and "--resolution 16" in line and "--channels" not in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ----- official network pickles -----


def test_resume_from_an_official_pickle(faces, tmp_path, official_names, monkeypatch):
    snap = official_snapshot()
    pkl = write_official(tmp_path / "network-snapshot-000200.pkl", snap, official_names)
    monkeypatch.undo()  # reading needs none of the official modules
    trainer = make_trainer(faces, resume=str(pkl))
    assert trainer.transfer and trainer.progress.cur_nimg == 0 and trainer.controller.ada_kimg == 100
    for key in ("G", "D", "G_ema"):
        assert_same_state(getattr(trainer, key), snap[key].state_dict())

    run = train(tmp_path / "runs", "--data", faces, "--kimg", "0.004", "--resume", str(pkl))
    ckpt = load_checkpoint(snapshot_of(run))
    assert ckpt["progress"]["cur_nimg"] == 4
    assert not torch.equal(ckpt["G"]["synthesis.b16.conv1.weight"], snap["G"].synthesis.b16.conv1.weight)


def test_official_pickle_of_another_resolution_is_one_clear_line(tmp_path, official_names, capsys):
    pkl = write_official(tmp_path / "x.pkl", official_snapshot(), official_names)
    big = tmp_path / "big"
    write_images(big, 4, 32, mode="L")
    line = cli_error(capsys, *TRAIN, "--data", str(big), "--resume", str(pkl), "--outdir", str(tmp_path / "o"))
    assert "x.pkl" in line and "16x16x1" in line and "32x32x1" in line


def test_the_architecture_comes_from_the_resumed_pickle(faces, tmp_path, official_names):
    # The preset says 2 mapping layers; the pickle has 3: the pickle's network is what gets trained.
    cfg = load_preset("tiny")
    cfg.model.map_layers = 3
    G, D = build_networks(cfg, 16, 1, 0)
    pkl = write_official(tmp_path / "x.pkl", dict(G=G, D=D, G_ema=G), official_names)
    trainer = make_trainer(faces, resume=str(pkl))
    assert trainer.G.mapping.num_layers == 3 and trainer.transfer
    assert_same_state(trainer.G, G.state_dict())


# ----- generating -----


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1])
def test_seed_to_z_is_the_official_draw(seed):
    z = seed_to_z(seed, 512)
    expected = np.random.RandomState(seed).randn(1, 512)
    assert z.shape == (1, 512) and z.dtype == torch.float64
    assert np.array_equal(z.numpy(), expected)


def test_seeds_outside_the_numpy_range_are_refused():
    assert parse_seeds("0-2,7,4294967295") == [0, 1, 2, 7, 2**32 - 1]
    from ada.errors import UserError

    with pytest.raises(UserError, match="--seeds: 4294967296 is outside 0..4294967295"):
        parse_seeds("4294967296")


def expected_image(G: torch.nn.Module, seed: int, psi: float, c: torch.Tensor | None = None) -> np.ndarray:
    """What the official generate.py computes for a seed: z from RandomState(seed), const noise."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim))
    with torch.no_grad():
        img = G.eval()(z, c, truncation_psi=psi, noise_mode="const")
    return to_uint8(img)[0, :, :, 0]


def generated(folder: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / name))


def test_generate_from_our_checkpoint(base_run, tmp_path):
    out = tmp_path / "gen"
    main(["generate", "--network", str(base_run), "--seeds", "0-3", "--trunc", "0.7", "--outdir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"] + [f"seed000{i}.png" for i in range(4)]
    ckpt = load_checkpoint(snapshot_of(base_run))
    G = Generator(**ckpt["G_kwargs"])
    G.load_state_dict(ckpt["G_ema"])
    for seed in range(4):
        assert np.array_equal(generated(out, f"seed{seed:04d}.png"), expected_image(G, seed, 0.7))
    grid = generated(out, "grid.png")
    assert grid.shape == (32, 32)  # 2 x 2 images of 16 px
    assert np.array_equal(grid[16:, :16], generated(out, "seed0002.png"))


def test_generate_from_an_official_pickle(tmp_path, official_names, monkeypatch):
    snap = official_snapshot()
    pkl = write_official(tmp_path / "x.pkl", snap, official_names)
    monkeypatch.undo()

    def gen(name: str, seeds: str, *extra: str) -> Path:
        out = tmp_path / name
        main(["generate", "--network", str(pkl), "--seeds", seeds, "--trunc", "0.7", "--outdir", str(out), *extra])
        return out

    # The default noise mode is const, as in the official generate.py; images are exactly its images.
    const = gen("const", "0-3")
    assert sorted(p.name for p in const.iterdir()) == ["grid.png"] + [f"seed000{i}.png" for i in range(4)]
    for seed in range(4):
        assert np.array_equal(generated(const, f"seed{seed:04d}.png"), expected_image(snap["G_ema"], seed, 0.7))
    none = gen("none", "1", "--noise-mode", "none")
    assert not np.array_equal(generated(none, "seed0001.png"), generated(const, "seed0001.png"))
    random = gen("random", "1", "--noise-mode", "random")
    assert not np.array_equal(generated(random, "seed0001.png"), generated(const, "seed0001.png"))
    assert not np.array_equal(generated(random, "seed0001.png"), generated(none, "seed0001.png"))


def test_generate_from_a_conditional_network(tmp_path, official_names, capsys):
    snap = official_snapshot(c_dim=3)
    pkl = write_official(tmp_path / "cond.pkl", snap, official_names)
    line = cli_error(capsys, "generate", "--network", str(pkl), "--seeds", "0", "--outdir", str(tmp_path / "a"))
    assert "conditional" in line and "--class" in line
    line = cli_error(capsys, "generate", "--network", str(pkl), "--seeds", "0", "--class", "3",
                     "--outdir", str(tmp_path / "a"))
    assert "--class=3" in line and "0..2" in line
    main(["generate", "--network", str(pkl), "--seeds", "5", "--class", "1", "--outdir", str(tmp_path / "b")])
    c = torch.eye(3)[1:2]
    assert np.array_equal(generated(tmp_path / "b", "seed0005.png"), expected_image(snap["G_ema"], 5, 1.0, c))
