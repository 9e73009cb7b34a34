"""The tools around a trained model: projection, style mixing, interpolation videos, augmentation preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from ada import movie
from ada.augment_preview import parse_probabilities, preview_grid
from ada.cli import main
from ada.data import open_dataset
from ada.generate import seed_to_z
from ada.images import tile, to_uint8
from ada.projector import Schedule, noise_buffers, project, w_statistics
from ada.style_mixing import mix, mixing_grid, parse_styles
from ada.video import interpolation_frames, keyframes, looping_path
from augment import AugmentPipe
from tests._tiny import save_generator, tiny_generator
from tests.conftest import write_images


def seed_image(G, seed, psi=1.0):
    with torch.no_grad():
        return to_uint8(G(seed_to_z(seed, G.z_dim).float(), None, truncation_psi=psi, noise_mode="const"))[0]


def png(path):
    with Image.open(path) as image:
        return np.asarray(image)


def error_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


# --- ada project ----------------------------------------------------------------------------------


def test_projecting_an_image_of_G_recovers_its_w():
    G = tiny_generator(res=16)
    noise_before = [buf.clone() for buf in noise_buffers(G)]
    w_true = G.mapping(seed_to_z(0, G.z_dim).float(), None)[0]
    target = seed_image(G, 0).transpose(2, 0, 1)
    result = project(G, target, schedule=Schedule(steps=150, w_avg_samples=1000))
    assert result.ws.shape == (150, G.num_ws, G.w_dim)
    assert result.losses[-1] < 1e-4 < result.losses[0]
    w_avg, _ = w_statistics(G, 1000, torch.device("cpu"))
    start = float((w_avg[0, 0] - w_true[0]).norm())
    assert float((result.ws[-1] - w_true).norm(dim=1).max()) < 0.1 * start
    assert all(torch.equal(a, b) for a, b in zip(noise_buffers(G), noise_before, strict=True))  # G untouched


def test_project_and_render_the_projected_w_end_to_end(tmp_path, capsys):
    network = save_generator(tiny_generator(res=16), tmp_path / "G.pt")
    main(["generate", "--network", str(network), "--seeds", "3", "--outdir", str(tmp_path / "seeds")])
    main(["project", "--network", str(network), "--target", str(tmp_path / "seeds" / "seed0003.png"),
          "--outdir", str(tmp_path / "proj"), "--steps", "150", "--save-video", "1"])
    out = tmp_path / "proj"
    with np.load(out / "projected_w.npz", allow_pickle=False) as data:
        assert data["w"].shape == (1, tiny_generator(res=16).num_ws, 8)
    assert np.array_equal(png(out / "target.png"), png(tmp_path / "seeds" / "seed0003.png"))
    assert np.abs(png(out / "proj.png").astype(int) - png(out / "target.png")).mean() < 2
    video = out / ("proj.mp4" if movie.ffmpeg_available() else "proj.gif")
    assert count_frames(video) == 150
    main(["generate", "--network", str(network), "--projected-w", str(out / "projected_w.npz"),
          "--outdir", str(tmp_path / "rendered")])
    assert np.array_equal(png(tmp_path / "rendered" / "proj00.png"), png(out / "proj.png"))


def test_generate_refuses_a_projected_w_of_another_network(tmp_path, capsys):
    network = save_generator(tiny_generator(res=16), tmp_path / "G.pt")
    np.savez(tmp_path / "w.npz", w=np.zeros([1, 3, 8], dtype=np.float32))
    err = error_line(capsys, ["generate", "--network", str(network), "--projected-w", str(tmp_path / "w.npz"),
                              "--outdir", str(tmp_path / "out")])
    assert "(1, 3, 8)" in err and "[N, 6, 8]" in err
    err = error_line(capsys, ["generate", "--network", str(network), "--outdir", str(tmp_path / "out")])
    assert "--seeds" in err and "--projected-w" in err


def count_frames(path):
    """The frames a player shows. Pillow writes a frame identical to the one before it (a projection that
    has converged) as a longer display of that one, so a GIF's frames are counted in display time."""
    if path.suffix == ".gif":
        with Image.open(path) as image:
            durations = [frame.info["duration"] for frame in ImageSequence.Iterator(image)]
        return sum(durations) // min(durations)
    import imageio.v3 as iio

    return iio.imread(path).shape[0]


# --- ada style-mixing -----------------------------------------------------------------------------


def test_style_mixing_grid_carries_the_columns_styles():
    G = tiny_generator(res=16)
    rows, cols, coarse = [85, 100], [55, 821, 7], [0, 1, 2]
    grid = mixing_grid(G, rows, cols, coarse)
    assert grid.shape == (16 * 3, 16 * 4, 3)
    cell = lambda r, c: grid[16 * r:16 * (r + 1), 16 * c:16 * (c + 1)]  # noqa: E731
    assert not cell(0, 0).any()
    for c, seed in enumerate(cols, 1):
        assert np.array_equal(cell(0, c), seed_image(G, seed))
    for r, seed in enumerate(rows, 1):
        assert np.array_equal(cell(r, 0), seed_image(G, seed))
    w = {seed: G.mapping(seed_to_z(seed, 8).float(), None)[0] for seed in rows + cols}
    expected = w[100].clone()
    expected[coarse] = w[821][coarse]  # the column seed's coarse layers, the row seed's fine ones
    with torch.no_grad():
        assert np.array_equal(cell(2, 2), to_uint8(G.synthesis(expected[None], noise_mode="const"))[0])
    assert not np.array_equal(cell(2, 2), cell(2, 0)) and not np.array_equal(cell(2, 2), cell(0, 2))
    # Taking every layer from the column gives the column seed's image.
    every = mixing_grid(G, rows, cols, list(range(G.num_ws)))
    assert np.array_equal(every[16:32, 16:32], seed_image(G, 55))


def test_mix_and_parse_styles():
    row, col = torch.zeros(6, 2), torch.ones(6, 2)
    assert mix(row, col, [0, 1])[:, 0].tolist() == [1, 1, 0, 0, 0, 0]
    assert parse_styles("0-2,4", 6) == [0, 1, 2, 4]


def test_style_mixing_command(tmp_path, capsys):
    network = save_generator(tiny_generator(res=16, channels=1), tmp_path / "G.pt")
    main(["style-mixing", "--network", str(network), "--rows", "85,100", "--cols", "55,821", "--styles", "0-3",
          "--out", str(tmp_path / "figs" / "grid.png")])
    assert png(tmp_path / "figs" / "grid.png").shape == (48, 48)
    err = error_line(capsys, ["style-mixing", "--network", str(network), "--rows", "1", "--cols", "2",
                              "--styles", "0-9", "--out", str(tmp_path / "grid.png")])
    assert "--styles: 0-9" in err and "0..5" in err


# --- ada video ------------------------------------------------------------------------------------


def test_video_frames_start_at_the_seeds_and_loop():
    G = tiny_generator(res=16)
    cells = keyframes(list(range(6)), columns=2, rows=1)
    assert cells == [[0, 1, 2], [3, 4, 5]]
    frames = list(interpolation_frames(G, cells, columns=2, frames_per_seed=4, truncation_psi=0.7))
    assert len(frames) == 3 * 4 and frames[0].shape == (16, 32, 3)
    first = tile(np.stack([seed_image(G, 0, psi=0.7), seed_image(G, 3, psi=0.7)]), 2, 1)
    assert np.array_equal(frames[0], first)
    assert np.array_equal(frames[4][:, :16], seed_image(G, 1, psi=0.7))  # the next keyframe, 4 frames on
    assert not np.array_equal(frames[1], frames[0])
    path = looping_path(np.random.RandomState(0).randn(3, 6, 8))
    np.testing.assert_allclose(path(3.0), path(0.0), atol=1e-12)  # frame N would be frame 0 again


def test_video_command_writes_every_frame(tmp_path, capsys):
    G = tiny_generator(res=16, channels=1)
    network = save_generator(G, tmp_path / "G.pt")
    main(["video", "--network", str(network), "--seeds", "0-3", "--grid", "2x1", "--frames-per-seed", "5",
          "--out", str(tmp_path / "lerp.gif")])
    with Image.open(tmp_path / "lerp.gif") as gif:
        frames = [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == 10
    assert np.array_equal(frames[0], tile(np.stack([seed_image(G, 0), seed_image(G, 2)]), 2, 1)[:, :, 0])
    if movie.ffmpeg_available():
        main(["video", "--network", str(network), "--seeds", "0-3", "--grid", "2x1", "--frames-per-seed", "5",
              "--out", str(tmp_path / "lerp.mp4")])
        assert count_frames(tmp_path / "lerp.mp4") == 10
    err = error_line(capsys, ["video", "--network", str(network), "--seeds", "0-4", "--grid", "2x1",
                              "--out", str(tmp_path / "x.mp4")])
    assert "5 seeds" in err and "multiple of 2" in err


def test_mp4_without_ffmpeg_is_written_as_gif(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(movie, "ffmpeg_available", lambda: False)
    network = save_generator(tiny_generator(res=16), tmp_path / "G.pt")
    main(["video", "--network", str(network), "--seeds", "0-1", "--frames-per-seed", "2",
          "--out", str(tmp_path / "lerp.mp4")])
    assert "writing" in capsys.readouterr().out and not (tmp_path / "lerp.mp4").exists()
    assert count_frames(tmp_path / "lerp.gif") == 4


# --- ada augment ----------------------------------------------------------------------------------


def test_preview_at_p_zero_is_the_reals(tmp_path):
    write_images(tmp_path / "data", 12, 16, mode="RGB")
    dataset = open_dataset(str(tmp_path / "data"))
    grid = preview_grid(dataset, AugmentPipe("bgc"), [0.0, 1.0], count=5, seed=3)
    assert grid.shape == (32, 80, 3)
    chosen = sorted(np.random.RandomState(3).choice(12, 5, replace=False).tolist())
    reals = dataset.batch(chosen)[0].numpy().transpose(0, 2, 3, 1)
    assert np.array_equal(grid[:16], tile(reals, 5, 1))
    augmented = grid[16:].reshape(16, 5, 16, 3).transpose(1, 0, 2, 3)
    assert all(not np.array_equal(a, r) for a, r in zip(augmented, reals, strict=True))  # p = 1: all changed


def test_augment_command(tmp_path, capsys):
    write_images(tmp_path / "data", 12, 16)
    main(["augment", "--data", str(tmp_path / "data"), "--augpipe", "bgc", "--p", "0,0.2,0.4,0.6,0.8",
          "--out", str(tmp_path / "preview.png")])
    assert png(tmp_path / "preview.png").shape == (5 * 16, 8 * 16)
    assert parse_probabilities("0, .5,1") == [0.0, 0.5, 1.0]
    err = error_line(capsys, ["augment", "--data", str(tmp_path / "data"), "--p", "0.2,1.5",
                              "--out", str(tmp_path / "x.png")])
    assert "'1.5'" in err and "[0, 1]" in err


def test_every_tool_takes_an_official_pickle_and_a_run_directory(tmp_path, capsys, official_names):
    from ada.discriminator import Discriminator
    from tests._official_fixture import write_official

    G = tiny_generator(res=16)
    D = Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=256, channel_max=16)
    pickle_path = write_official(tmp_path / "network-snapshot-000100.pkl", dict(G=G, D=D, G_ema=G), official_names)
    run_dir = tmp_path / "00000-run"
    run_dir.mkdir()
    save_generator(G, run_dir / "network-snapshot-000004.pt")
    expected = seed_image(G, 55)
    for i, network in enumerate((pickle_path, run_dir)):
        main(["style-mixing", "--network", str(network), "--rows", "85", "--cols", "55", "--out",
              str(tmp_path / f"mix{i}.png")])
        assert np.array_equal(png(tmp_path / f"mix{i}.png")[:16, 16:], expected)
        main(["video", "--network", str(network), "--seeds", "55", "--frames-per-seed", "1",
              "--out", str(tmp_path / f"v{i}.gif")])
        assert count_frames(tmp_path / f"v{i}.gif") == 1
    main(["project", "--network", str(pickle_path), "--target", str(tmp_path / "mix0.png"), "--steps", "2",
          "--outdir", str(tmp_path / "proj")])
    assert (tmp_path / "proj" / "projected_w.npz").is_file()


def test_extra_kornia_stages_from_the_command_line(tmp_path, capsys):
    import kornia.augmentation as K

    from ada.distributed import DistContext
    from ada.launch import resolve_config, split_dataset
    from ada.training import Trainer

    cfg, ds = resolve_config("tiny", {"data": "lfw-faces16", "aug": {"extra": "perspective:0.2,blur"}})
    trainer = Trainer(cfg, *split_dataset(cfg, ds), DistContext(), log=lambda m: None)
    stages = list(trainer.augment_pipe.extra)
    assert [type(s) for s in stages] == [K.RandomPerspective, K.RandomGaussianBlur]
    err = error_line(capsys, ["train", "--cfg", "tiny", "--data", "lfw-faces16", "--aug-extra", "swirl", "-n"])
    assert "--aug-extra: unknown extra stage 'swirl'" in err
    err = error_line(capsys, ["train", "--data", "lfw-faces16", "--aug", "noaug", "--aug-extra", "blur", "-n"])
    assert "--aug=noaug" in err
    write_images(tmp_path / "data", 12, 16)
    main(["augment", "--data", str(tmp_path / "data"), "--p", "0,1", "--aug-extra", "erasing:0.3",
          "--count", "4", "--out", str(tmp_path / "preview.png")])
    grid = png(tmp_path / "preview.png")
    assert grid.shape == (32, 64) and not np.array_equal(grid[:16], grid[16:])


def test_projection_with_a_torchscript_distance_network(tmp_path):
    import metrics

    class Maps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.relu(self.conv(x / 255))
            return y, torch.nn.functional.avg_pool2d(y, 2)

    torch.manual_seed(0)
    torch.jit.script(Maps()).save(str(tmp_path / "maps.pt"))
    embed = metrics.load_lpips_embedding(tmp_path / "maps.pt")
    distance = metrics.lpips_style_distance(torch.jit.load(str(tmp_path / "maps.pt")))
    a, b = torch.rand(2, 3, 16, 16) * 255, torch.rand(2, 3, 16, 16) * 255
    torch.testing.assert_close((embed(a) - embed(b)).square().sum(1), distance(a, b))
    G = tiny_generator(res=16)
    result = project(G, seed_image(G, 4).transpose(2, 0, 1), embed, Schedule(steps=60, w_avg_samples=500))
    assert result.losses[-1] < 0.5 * result.losses[0]  # the gradient flows through the network
