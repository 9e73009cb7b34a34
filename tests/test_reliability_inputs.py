"""Hostile and careless input through the command line: one clear line, a non-zero exit, nothing lost.

Each test reproduces one finding of an adversarial pass over the CLI (issue 16): a traceback, a
hang, data silently lost or a wrong input silently accepted, and checks that it now ends in one
`error:` line naming the problem (or, where the input is fine, in the right result).
"""

from __future__ import annotations

import errno
import importlib.resources
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ada.config
import ada.data
import ada.files
from ada.cli import main
from ada.data import open_dataset
from ada.training import Trainer
from tests._tiny import save_generator, tiny_generator
from tests.conftest import REPO, png_header_only, write_images

TINY = ["--cfg", "tiny", "--aug", "noaug", "--metrics", "none"]


def cli_error(capsys, args: list[str], *patterns: str) -> str:
    """Run `ada ARGS` in this process: exit code 1 and one `error:` line on stderr holding `patterns`."""
    with pytest.raises(SystemExit) as exc_info:
        main(args)
    assert exc_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines[0]
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


def dry_run(data: Path | str, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", *TINY, "--data", str(data), "--outdir", str(tmp_path / "runs"), "-n", *extra]


def run_ada(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m ada ARGS` in its own process, for inputs that used to hang: the timeout ends a hang."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ada", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_one_error_line(result: subprocess.CompletedProcess, *patterns: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for pattern in patterns:
        assert pattern in lines[0], lines[0]


def write_labels(folder: Path, labels: list) -> None:
    names = sorted(p.name for p in folder.glob("*.png"))
    (folder / "dataset.json").write_text(json.dumps({"labels": [[n, v] for n, v in zip(names, labels, strict=True)]}))


def zip_of(folder: Path, path: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for image in sorted(folder.iterdir()):
            zf.write(image, image.name)
    return path


def patch_zip_member(path: Path, name: str, *, flags: int | None = None, method: int | None = None,
                     flip_data: bool = False) -> None:
    """Rewrite one member's header fields (in its local header and the central directory) or a data byte."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    local = info.header_offset
    central = data.rindex(name.encode()) - 46  # the central directory comes last
    assert data[central : central + 4] == b"PK\x01\x02"
    if flags is not None:
        data[local + 6 : local + 8] = data[central + 8 : central + 10] = flags.to_bytes(2, "little")
    if method is not None:
        data[local + 8 : local + 10] = data[central + 10 : central + 12] = method.to_bytes(2, "little")
    if flip_data:
        start = local + 30 + len(name) + int.from_bytes(data[local + 28 : local + 30], "little")
        data[start + info.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ----- 1. ada dataset never destroys its source or an existing file -----


def test_dataset_refuses_to_write_over_its_source_or_an_existing_file(tmp_path, capsys):
    src = tmp_path / "src"
    write_images(src, 4, 16)
    first = tmp_path / "a.zip"
    main(["dataset", "--source", str(src), "--dest", str(first), "--resolution", "16"])
    before = first.read_bytes()
    cli_error(capsys, ["dataset", "--source", str(first), "--dest", str(first), "--resolution", "8"], "is the source")
    cli_error(capsys, ["dataset", "--source", str(src), "--dest", str(src / "inner.zip"), "--resolution", "8"],
              "inside the source folder")
    other = tmp_path / "other.zip"
    other.write_bytes(b"precious")
    cli_error(capsys, ["dataset", "--source", str(first), "--dest", str(other), "--resolution", "8"],
              "exists", "--overwrite")
    assert first.read_bytes() == before and other.read_bytes() == b"precious"
    assert not (src / "inner.zip").exists()
    main(["dataset", "--source", str(first), "--dest", str(other), "--resolution", "8", "--overwrite"])
    assert open_dataset(str(other)).resolution == 8


# ----- 4. 16-bit PNGs -----


def test_16_bit_greyscale_pngs_are_scaled_to_8_bits_not_clipped(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    for i in range(4):
        Image.fromarray(ramp).save(folder / f"img{i}.png")  # mode I;16: a 16-bit greyscale PNG
    expected = np.rint(ramp / 257).astype(np.uint8)
    assert np.array_equal(open_dataset(str(folder)).images[0, 0], expected)
    main(["dataset", "--source", str(folder), "--dest", str(tmp_path / "deep.zip"), "--resolution", "16"])
    assert np.array_equal(open_dataset(str(tmp_path / "deep.zip")).images[0, 0], expected)


# ----- 5. FIFOs: read regular files only -----


def test_a_fifo_named_like_an_image_is_refused_without_blocking(tmp_path):
    data = tmp_path / "data"
    write_images(data, 4, 16)
    os.mkfifo(data / "pipe.png")
    result = run_ada(dry_run(data, tmp_path))
    assert_one_error_line(result, "pipe.png", "not a regular file")


def test_a_fifo_as_the_newest_snapshot_is_refused_without_blocking(small_checkpoint, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "network-snapshot-000000.pt").write_bytes(small_checkpoint.read_bytes())
    os.mkfifo(run / "network-snapshot-000004.pt")
    result = run_ada(["generate", "--network", str(run), "--seeds", "0", "--outdir", str(tmp_path / "out")])
    assert_one_error_line(result, "network-snapshot-000004.pt", "not a regular file",
                          f"previous snapshot {run / 'network-snapshot-000000.pt'}")


# ----- 6. zip bombs -----


def test_a_zip_bomb_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    data = tmp_path / "imgs"
    write_images(data, 4, 16)
    bomb = zip_of(data, tmp_path / "bomb.zip")
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.png", bytes(40 * 2**20))  # 40 MB of zeros in about 40 kB
    cli_error(capsys, dry_run(bomb, tmp_path), "bomb.zip", "bomb.png", "zip bomb")
    # And a member larger than any image may be, however well it is compressed.
    monkeypatch.setattr(ada.data, "MAX_MEMBER_BYTES", 2**20)
    big = zip_of(data, tmp_path / "big.zip")
    with zipfile.ZipFile(big, "a") as zf:
        zf.writestr("big.png", np.random.RandomState(0).bytes(2 * 2**20))
    cli_error(capsys, dry_run(big, tmp_path), "big.png", "more than any image may")


# ----- 7. ada generate --seeds: a bounded count -----


def test_generate_bounds_the_number_of_seeds(tmp_path, capsys):
    cli_error(capsys, ["generate", "--network", str(tmp_path / "none.pt"), "--seeds", "0-4294967295",
                       "--outdir", str(tmp_path / "out")], "--seeds", "more than 1000 seeds", "several calls")
    assert not (tmp_path / "out").exists()


# ----- 8, 9, 19. numbers that are not numbers, and empty paths -----


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        (["--kimg", "inf"], "--kimg=inf must be a finite number"),
        (["--tick", "inf"], "--tick=inf must be a finite number"),
        (["--gamma=inf"], "--gamma=inf must be a finite number"),
        (["--gamma", "nan"], "--gamma=nan must be a finite number"),
        (["--aug", "ada", "--ada-kimg", "inf"], "--ada-kimg=inf must be a finite number"),
        (["--seed", "99999999999999999999999"], "--seed=99999999999999999999999 must be in 0..4294967295"),
        (["--seed", "-1"], "--seed=-1 must be in 0..4294967295"),
        (["--seed", "1" + "0" * 400], "must be in 0..4294967295"),  # beyond the float range
        (["--resume="], "--resume= is empty"),
    ],
    ids=["kimg-inf", "tick-inf", "gamma-inf", "gamma-nan", "ada-kimg-inf", "seed-huge", "seed-negative",
         "seed-beyond-float", "resume-empty"],
)
def test_non_finite_and_empty_values_are_refused(tmp_path, capsys, flags, pattern):
    cli_error(capsys, ["train", "--cfg", "tiny", "--data", "lfw-faces16", "--outdir", str(tmp_path / "runs"),
                       "-n", *flags], pattern)


def test_an_infinite_run_length_leaves_no_empty_run_directory(tmp_path, capsys):
    cli_error(capsys, ["train", *TINY, "--data", "lfw-faces16", "--kimg", "inf", "--outdir", str(tmp_path / "runs")],
              "--kimg=inf")
    assert not (tmp_path / "runs").exists()


def test_generate_refuses_a_non_finite_truncation(small_checkpoint, tmp_path, capsys):
    cli_error(capsys, ["generate", "--network", str(small_checkpoint), "--seeds", "0", "--trunc", "nan",
                       "--outdir", str(tmp_path / "out")], "--trunc=nan must be a finite number")
    assert not (tmp_path / "out").exists()


# ----- the tools around a trained model (issue 18) keep the same promise -----


class Hang(BaseException):
    """Raised in a command that runs past its deadline; no `except Exception` of the code under test
    can turn it into an error line."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tool_inputs(folder: Path) -> dict[str, Path]:
    """A tiny network and the files the bad cases below hand to it, by name."""
    folder.mkdir()
    files = {"network": save_generator(tiny_generator(res=16), folder / "G.pt")}
    files.update({key: folder / name for key, name in (("w", "w.npz"), ("npy", "w.npy"), ("nan", "nan.npz"),
                                                         ("damaged", "damaged.npz"), ("fifo", "fifo.png"),
                                                         ("bomb", "bomb.png"))})
    w = np.zeros([1, tiny_generator(res=16).num_ws, 8], dtype=np.float32)
    np.savez(files["w"], w=w)
    np.save(files["npy"], w)
    np.savez(files["nan"], w=np.full_like(w, np.nan))
    raw = files["w"].read_bytes()
    files["damaged"].write_bytes(raw[: len(raw) // 2])
    os.mkfifo(files["fifo"])
    files["bomb"].write_bytes(png_header_only(20000, 20000))
    return files


@pytest.mark.parametrize(
    ("args", "patterns"),
    [
        (["style-mixing", "--rows", "1", "--cols", "2", "--trunc", "nan", "--out", "{out}/mix.png"],
         ["--trunc=nan must be a finite number"]),
        (["video", "--seeds", "0", "--trunc", "nan", "--out", "{out}/v.gif"], ["--trunc=nan must be a finite number"]),
        (["video", "--seeds", "0", "--fps", "nan", "--out", "{out}/v.gif"], ["--fps=nan must be a finite number"]),
        (["video", "--seeds", "0", "--fps", "inf", "--out", "{out}/v.gif"], ["--fps=inf must be a finite number"]),
        (["video", "--seeds", "0", "--fps", "0.001", "--out", "{out}/v.gif"], ["--fps=0.001 must be at least 0.01"]),
        (["augment", "--data", "lfw-faces16", "--seed", "-1", "--out", "{out}/aug.png"],
         ["--seed=-1 must be in 0..4294967295"]),
        (["project", "--target", "{bomb}", "--seed", str(10**20), "--outdir", "{out}"],
         [f"--seed={10**20} must be in 0..4294967295"]),
        (["generate", "--projected-w", "{npy}", "--outdir", "{out}"], ["w.npy: a single array (.npy), not an .npz"]),
        (["generate", "--projected-w", "{damaged}", "--outdir", "{out}"], ["damaged.npz: not an .npz file"]),
        (["generate", "--projected-w", "{nan}", "--outdir", "{out}"], ["nan.npz: w holds NaN or infinite values"]),
        (["generate", "--projected-w", "{w}", "--trunc", "0.5", "--outdir", "{out}"],
         ["--trunc cannot be given with --projected-w"]),
        (["generate", "--projected-w", "{w}", "--class", "1", "--outdir", "{out}"],
         ["--class cannot be given with --projected-w"]),
        (["project", "--target", "{fifo}", "--outdir", "{out}"], ["fifo.png is not a regular file"]),
        (["project", "--target", "{bomb}", "--outdir", "{out}"], ["bomb.png", "megapixel limit"]),
    ],
    ids=["style-mixing-trunc-nan", "video-trunc-nan", "video-fps-nan", "video-fps-inf", "video-fps-tiny",
         "augment-seed-negative", "project-seed-huge", "projected-w-npy", "projected-w-damaged", "projected-w-nan",
         "projected-w-with-trunc", "projected-w-with-class", "project-fifo-target", "project-bomb-target"],
)
def test_the_tools_refuse_bad_input_in_one_line(tmp_path, capsys, args, patterns):
    files = tool_inputs(tmp_path / "in")
    argv = [arg.format(out=tmp_path / "out", **files) for arg in args]
    if argv[0] != "augment":
        argv += ["--network", str(files["network"])]
    with deadline(60):
        cli_error(capsys, argv, *patterns)
    assert not (tmp_path / "out").exists()


def test_project_scales_a_16_bit_target_to_8_bits(tmp_path):
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # mode I;16, at G's resolution: no resizing
    network = save_generator(tiny_generator(res=16), tmp_path / "G.pt")
    main(["project", "--network", str(network), "--target", str(tmp_path / "deep.png"), "--steps", "1",
          "--outdir", str(tmp_path / "out")])
    with Image.open(tmp_path / "out" / "target.png") as target:
        assert np.array_equal(np.asarray(target.convert("L")), np.rint(ramp / 257).astype(np.uint8))


# ----- 10, 11. broken symlinks and file names that are not UTF-8 -----


def broken_link(folder: Path) -> str:
    (folder / "broken.png").symlink_to(folder / "missing.png")
    return "broken.png"


def self_loop(folder: Path) -> str:
    (folder / "loop.png").symlink_to(folder / "loop.png")
    return "loop.png"


def not_utf8(folder: Path) -> str:
    (folder / "img0000.png").rename(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))
    return "caf\\xe9.png"


@pytest.mark.parametrize(
    ("make", "pattern"),
    [(broken_link, "broken symbolic link"), (self_loop, "broken symbolic link"), (not_utf8, "not valid UTF-8")],
    ids=["dangling-symlink", "symlink-loop", "non-utf8-name"],
)
@pytest.mark.parametrize("command", ["train", "dataset"])
def test_unreadable_folder_entries_are_refused_by_name(tmp_path, capsys, make, pattern, command):
    data = tmp_path / "data"
    write_images(data, 4, 16)
    name = make(data)
    args = (dry_run(data, tmp_path) if command == "train"
            else ["dataset", "--source", str(data), "--dest", str(tmp_path / "out.zip"), "--resolution", "16"])
    cli_error(capsys, args, name, pattern)
    assert not (tmp_path / "out.zip").exists()


# ----- 12. zip members that cannot be read -----


@pytest.mark.parametrize(
    ("damage", "pattern"),
    [
        (dict(flip_data=True), "member img0001.png is damaged (BadZipFile: Bad CRC-32"),
        (dict(flags=0x1), "member img0001.png is encrypted"),
        (dict(method=99), "member img0001.png uses compression method 99, which cannot be read"),
    ],
    ids=["bad-crc", "encrypted", "unknown-method"],
)
def test_unreadable_zip_members_are_refused_by_name(tmp_path, capsys, damage, pattern):
    write_images(tmp_path / "imgs", 4, 16)
    data = zip_of(tmp_path / "imgs", tmp_path / "data.zip")
    patch_zip_member(data, "img0001.png", **damage)
    cli_error(capsys, dry_run(data, tmp_path), "data.zip", pattern)


# ----- 13, 20. labels -----


@pytest.mark.parametrize(
    ("labels", "pattern"),
    [
        ([0, [1, 2], 1, 0], "one kind for all images"),
        ([[0, 1], [1], [1, 0], [0, 1]], "label lists have different lengths (1 and 2)"),
        ([[0.5, float("nan")], [1, 0], [1, 0], [0, 1]], "NaN or infinite"),
        ([0, 1, 2**40, 1], f"class id {2**40} is outside 0..65535"),
        ([0, 1.5, 1, 0], "class id 1.5 is not a whole number"),
        ([[], [], [], []], "empty lists"),
        ([0, True, 1, 0], "one kind for all images"),
    ],
    ids=["int-and-list", "uneven-lists", "nan", "huge-class-id", "fractional-class-id", "empty-lists", "bool"],
)
def test_bad_labels_are_refused(tmp_path, capsys, labels, pattern):
    data = tmp_path / "data"
    write_images(data, 4, 16)
    write_labels(data, labels)
    cli_error(capsys, dry_run(data, tmp_path, "--cond=1"), pattern)


def test_whole_float_class_ids_are_classes_as_the_official_loader_reads_them(tmp_path, capsys):
    data = tmp_path / "data"
    write_images(data, 6, 16)
    write_labels(data, [0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    main(dry_run(data, tmp_path, "--cond=1"))
    assert "3 classes" in capsys.readouterr().out
    assert open_dataset(str(data), cond=True).labels.tolist() == [0, 1, 2, 0, 1, 2]


# ----- 14, 15. the output folder -----


def test_a_read_only_outdir_that_exists_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    outdir = tmp_path / "runs"
    outdir.mkdir()

    def read_only_mkdir(self, mode=0o777, parents=False, exist_ok=False):
        if self.exists():
            if exist_ok and self.is_dir():
                return
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(self))
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    cli_error(capsys, ["train", *TINY, "--data", "lfw-faces16", "--kimg", "0.004", "--outdir", str(outdir)],
              f"--outdir={outdir}", "Read-only file system")
    assert not any(outdir.iterdir())


def test_entries_of_outdir_that_start_with_other_digits_are_not_run_numbers(tmp_path, monkeypatch):
    outdir = tmp_path / "runs"
    (outdir / "00003-earlier").mkdir(parents=True)
    (outdir / "²-notes.txt").write_text("notes")
    (outdir / "٣-arabic-digit").mkdir()
    monkeypatch.setattr(Trainer, "run", lambda self, run_dir: None)  # the run directory is what is tested
    main(["train", *TINY, "--data", "lfw-faces16", "--kimg", "0.004", "--outdir", str(outdir)])
    assert sorted(p.name.split("-")[0] for p in outdir.iterdir()) == ["00003", "00004", "²", "٣"]


# ----- 16. ada compare -----


@pytest.fixture
def finished_run(tmp_path) -> Path:
    run = tmp_path / "00000-data"
    run.mkdir()
    (run / "stats.jsonl").write_text(json.dumps({"tick": 0, "kimg": 0.5, "p": 0.1, "r_t": 0.5}) + "\n")
    return run


def test_compare_refuses_an_unwritable_out_in_one_line(finished_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("x")
    cli_error(capsys, ["compare", str(finished_run), "--out", str(tmp_path / "a-file" / "plot.png")], "plot.png")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(ada.files, "create_temporary", read_only)
    cli_error(capsys, ["compare", str(finished_run), "--out", str(tmp_path / "plot.png")], "plot.png",
              "Read-only file system")


def test_compare_refuses_metric_results_that_are_not_an_object(finished_run, capsys):
    (finished_run / "metric-fid50k_full.jsonl").write_text(json.dumps({"results": [1, 2], "kimg": 0.5}) + "\n")
    cli_error(capsys, ["compare", str(finished_run), "--out", str(finished_run / "c.png")],
              "metric-fid50k_full.jsonl", "record 1", "not a JSON object")


# ----- 18. presets -----


def test_a_preset_value_of_the_wrong_type_is_refused(tmp_path, capsys):
    presets = tmp_path / "configs"
    presets.mkdir()
    tiny = (importlib.resources.files(ada.config.PRESET_PACKAGE) / "tiny.yaml").read_text()
    (presets / "typo.yaml").write_text(tiny + "\nkimg: 1O\n")
    (presets / "broken.yaml").write_text("kimg: [1\n")
    (presets / "listed.yaml").write_text("- kimg\n")
    (presets / "huge.yaml").write_text(tiny + f"\nkimg: {10**400}\n")  # an int that no float holds
    base = ["train", "--data", "lfw-faces16", "--outdir", str(tmp_path / "runs"), "-n"]
    cli_error(capsys, [*base, "--cfg", str(presets / "typo.yaml")], "typo.yaml", "kimg: '1O' is not a number")
    cli_error(capsys, [*base, "--cfg", str(presets / "broken.yaml")], "broken.yaml", "not valid YAML")
    cli_error(capsys, [*base, "--cfg", str(presets / "listed.yaml")], "listed.yaml", "is a mapping of options")
    cli_error(capsys, [*base, "--cfg", str(presets / "huge.yaml")], "huge.yaml", "is too large")


def test_cfg_with_a_file_path_reads_that_file_alone(tmp_path, capsys):
    """--cfg takes YAML files (issue 17); a path never escapes to configs/ nor finds a file by another name."""
    (tmp_path / "mine.yaml").write_text("kimg: 1\n")
    base = ["train", "--data", "lfw-faces16", "--outdir", str(tmp_path / "runs"), "-n"]
    main([*base, "--cfg", str(tmp_path / "mine.yaml")])
    assert '"kimg": 1.0' in capsys.readouterr().out
    cli_error(capsys, [*base, "--cfg", str(tmp_path / "mine")], "mine: no such file")  # not mine.yaml


# ----- 21. ada dataset names the bad source image -----


def test_dataset_names_a_truncated_source_image(tmp_path, capsys):
    src = tmp_path / "src"
    write_images(src, 3, 64, mode="RGB")
    noise = np.random.RandomState(0).randint(0, 256, [64, 64, 3], dtype=np.uint8)
    Image.fromarray(noise).save(src / "cut.png")
    raw = (src / "cut.png").read_bytes()
    (src / "cut.png").write_bytes(raw[: len(raw) * 2 // 3])
    line = cli_error(capsys, ["dataset", "--source", str(src), "--dest", str(tmp_path / "out.zip"),
                              "--resolution", "16"], "cut.png", "corrupt")
    assert "out.zip" not in line
    assert not (tmp_path / "out.zip").exists()


# ----- 23. why there is no validation split -----


def test_a_validation_split_that_rounds_to_nothing_says_so(tmp_path, capsys):
    data = tmp_path / "data"
    write_images(data, 8, 16)
    main(["train", *TINY, "--data", str(data), "--kimg", "0.004", "--batch", "4", "--outdir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert "--val=0.05 of 8 images rounds to 0 images" in out
    assert "(--val=0)" not in out
