"""Fuzzing what a user hands us: a few hundred seeded mutations of images, dataset zips, dataset.json
files, checkpoints and official network pickles.

Each case must end in success or in one `UserError` line, never in another exception (which would
reach the user as a traceback) and never in a hang. The cases run in this process through the
library functions the command line calls (a handful also through the command line itself); a
timer ends any case that runs for CASE_SECONDS, which only a hang comes near. The mutations are
seeded, so a failure names a case that reproduces.
"""

from __future__ import annotations

import io
import json
import random
import re
import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, features

from ada import official
from ada.checkpoint import load_generator
from ada.cli import main
from ada.data import open_dataset
from ada.dataset_tool import convert
from ada.distributed import DistContext
from ada.errors import UserError
from ada.launch import resolve_config, split_dataset
from ada.training import TickStats, Trainer
from tests._official_fixture import write_official
from tests.test_official_import import make_snapshot

# A guard against hangs, not a measurement: every case takes well under a second.
CASE_SECONDS = 60


class CaseHung(Exception):
    pass


@contextmanager
def time_limit(case: str) -> Iterator[None]:
    def stuck(signum: int, frame: Any) -> None:
        raise CaseHung(f"{case} ran for {CASE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cases(cases: Iterator[tuple[str, Callable[[], Any]]]) -> dict[str, int]:
    """Run every case; fail with the list of cases that ended in anything but success or one UserError line."""
    outcomes = {"ok": 0, "refused": 0}
    failures = []
    for name, case in cases:
        try:
            with time_limit(name):
                case()
            outcomes["ok"] += 1
        except UserError as exc:
            message = str(exc)
            if not message or "\n" in message:
                failures.append(f"{name}: a UserError that is not one line: {message!r}")
            outcomes["refused"] += 1
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, "\n".join(failures)
    return outcomes


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four byte-level damages: flipped bits, size fields gone wrong, cuts, insertions, copies."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(out)) if out else 0
        op = rng.randrange(6)
        if op == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            out[pos : pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                             b"\x00\x01\x00\x00"])
        elif op == 2:
            del out[pos:]
        elif op == 3:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            n = rng.randint(1, 64)
            out[pos : pos + n] = rng.randbytes(n)
        else:
            out[pos:pos] = out[pos : pos + rng.randint(1, 64)]
    return bytes(out)


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def image_corpus() -> list[tuple[str, bytes]]:
    """8 px images in every format and mode a dataset may hold: (file name, bytes)."""
    rng = np.random.RandomState(0)
    grey = Image.fromarray(rng.randint(0, 256, [8, 8], dtype=np.uint8))
    rgb = Image.fromarray(rng.randint(0, 256, [8, 8, 3], dtype=np.uint8))
    deep = Image.fromarray(rng.randint(0, 65536, [8, 8]).astype(np.uint16))
    corpus = [("grey.png", encoded(grey, "PNG")), ("rgb.png", encoded(rgb, "PNG")), ("deep.png", encoded(deep, "PNG")),
              ("rgb.jpg", encoded(rgb, "JPEG")), ("grey.bmp", encoded(grey, "BMP"))]
    if features.check("webp"):
        corpus.append(("rgb.webp", encoded(rgb, "WEBP")))
    return corpus


# ----- images, zips, dataset.json -----


def image_cases(tmp_path: Path, count: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    rng = random.Random(1)
    corpus = image_corpus()
    for i in range(count):
        name, data = rng.choice(corpus)
        folder = tmp_path / f"images{i}"
        folder.mkdir()
        (folder / "good.png").write_bytes(corpus[0][1])
        (folder / name).write_bytes(mutate(rng, data))
        if i % 2:
            yield f"image case {i} ({name}, convert)", lambda f=folder, n=i: convert(
                str(f), str(tmp_path / f"out{n}.zip"), 8
            )
        else:
            yield f"image case {i} ({name}, open)", lambda f=folder: open_dataset(str(f))


def dataset_zip() -> bytes:
    """A dataset zip with labels, the same bytes in every run (fixed member dates)."""
    members = {f"00000/img{i:08d}{Path(name).suffix}": data for i, (name, data) in enumerate(image_corpus()[:4])}
    members["dataset.json"] = json.dumps({"labels": [[n, k % 3] for k, n in enumerate(sorted(members))]}).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def zip_cases(tmp_path: Path, count: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    rng = random.Random(2)
    seed = dataset_zip()
    for i in range(count):
        path = tmp_path / f"data{i}.zip"
        path.write_bytes(mutate(rng, seed))
        cond = rng.random() < 0.5
        yield f"zip case {i} (cond={cond})", lambda p=path, c=cond: open_dataset(str(p), cond=c)


def random_label(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10)
    if kind == 0:
        return rng.randint(-2, 4)
    if kind == 1:
        return 2 ** rng.randint(20, 70)
    if kind == 2:
        return rng.gauss(0, 3)
    if kind == 3:
        return rng.choice([float("nan"), float("inf"), -float("inf"), 1e300, 2.0, -0.0])
    if kind == 4:
        return rng.random() < 0.5
    if kind == 5:
        return None
    if kind == 6:
        return rng.choice(["1", "cat", ""])
    if kind == 7 and depth < 2:
        return [random_label(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == 8:
        return [rng.gauss(0, 1) for _ in range(rng.randint(0, 3))]
    return {"class": rng.randint(0, 3)}


def random_dataset_json(rng: random.Random, names: list[str]) -> bytes:
    """Sometimes valid (class ids or vectors), mostly not: labels of every type, names and structure."""
    style = rng.randrange(6)
    if style == 0:
        labels = [[n, rng.randint(0, 3)] for n in names]
    elif style == 1:
        width = rng.randint(0, 3)
        labels = [[n, [rng.gauss(0, 1) for _ in range(width)]] for n in names]
    elif style in (2, 3):
        labels = [[n, random_label(rng)] for n in names]
    elif style == 4:
        labels = [[rng.choice([*names, "missing.png", 7, None]), rng.randint(0, 3)] for _ in names]
    else:
        return mutate(rng, json.dumps({"labels": [[n, i % 3] for i, n in enumerate(names)]}).encode())
    meta: Any = {"labels": labels}
    if rng.random() < 0.1:
        meta = rng.choice([labels, 3, "labels", None, {"labels": {"a.png": 1}}, {"labels": [1, 2]}])
    return json.dumps(meta).encode()


def label_cases(tmp_path: Path, count: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    rng = random.Random(3)
    corpus = image_corpus()
    for i in range(count):
        folder = tmp_path / f"labelled{i}"
        folder.mkdir()
        for k in range(3):
            (folder / f"img{k}.png").write_bytes(corpus[0][1])
        (folder / "dataset.json").write_bytes(random_dataset_json(rng, [f"img{k}.png" for k in range(3)]))
        cond = rng.random() < 0.7
        yield f"dataset.json case {i} (cond={cond})", lambda f=folder, c=cond: open_dataset(str(f), cond=c)


# ----- checkpoints and official pickles -----


JUNK = [None, "x", -1, 0, 2**70, 1.5, float("nan"), float("inf"), True, [], [1, 2], {}, {"a": 1},
        torch.zeros(0), torch.zeros(3, 3), torch.full((2,), float("nan")), torch.tensor(7)]


def junk_for(rng: random.Random, value: Any) -> Any:
    """A replacement for `value`: junk of any type, or (for a tensor) the tensor reshaped or cut."""
    if isinstance(value, torch.Tensor) and value.numel() > 1 and rng.random() < 0.5:
        return rng.choice([value.reshape(-1), value.flatten()[:-1], value.double(), value * float("nan")])
    return rng.choice(JUNK)


def damage_structure(rng: random.Random, ckpt: dict) -> str:
    """Delete or replace one entry, somewhere in the checkpoint's nested dicts and lists; returns where."""
    container: Any = ckpt
    key: Any = rng.choice(list(ckpt))
    where = [str(key)]
    while isinstance(container[key], dict | list) and container[key] and rng.random() < 0.7:
        container = container[key]
        key = rng.choice(list(container)) if isinstance(container, dict) else rng.randrange(len(container))
        where.append(str(key))
    if isinstance(container, dict) and rng.random() < 0.3:
        del container[key]
        return "deleted " + ".".join(where)
    container[key] = junk_for(rng, container[key])
    return "replaced " + ".".join(where)


def resume_from(path: Path, data: Path) -> None:
    """What `ada train --resume PATH` does up to its first step, and that step."""
    cfg, dataset = resolve_config("tiny", {"data": str(data), "aug": {"mode": "noaug"}, "batch": 4, "val": 0.0,
                                           "resume": str(path)})
    train_set, val_set = split_dataset(cfg, dataset)
    trainer = Trainer(cfg, train_set, val_set, DistContext(), log=lambda message: None)
    trainer.train_step(TickStats())
    trainer.check_health()


def checkpoint_cases(small_checkpoint: Path, tmp_path: Path, count: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    rng = random.Random(4)
    raw = small_checkpoint.read_bytes()
    data = small_checkpoint.parent.parent / "data"
    for i in range(count):
        path = tmp_path / f"c{i}" / "network-snapshot-000004.pt"
        path.parent.mkdir()
        if i % 3 == 0:
            path.write_bytes(mutate(rng, raw))
            yield f"checkpoint case {i} (bytes)", lambda p=path: load_generator(str(p))
            continue
        ckpt = torch.load(small_checkpoint, weights_only=True)
        where = damage_structure(rng, ckpt)
        torch.save(ckpt, path)
        if i % 3 == 1:
            yield f"checkpoint case {i} ({where}, generate)", lambda p=path: load_generator(str(p))
        else:
            yield f"checkpoint case {i} ({where}, resume)", lambda p=path: resume_from(p, data)


def without_addresses(raw: bytes) -> bytes:
    """The pickle with its storage keys (memory addresses, as torch writes them) numbered instead, so that
    the same seed damages the same bytes in every run."""
    keys: dict[bytes, bytes] = {}
    return re.sub(rb"(?<=X\x0e\x00\x00\x00)\d{14}", lambda m: keys.setdefault(m[0], b"%014d" % len(keys)), raw)


def official_cases(tmp_path: Path, names: Any, count: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    rng = random.Random(5)
    raw = without_addresses(write_official(tmp_path / "snap.pkl", make_snapshot(0), names).read_bytes())
    for i in range(count):
        path = tmp_path / f"official{i}.pkl"
        path.write_bytes(mutate(rng, raw))
        yield f"official pickle case {i}", lambda p=path: official.load_official_pickle(p)


# ----- the tests -----


def test_fuzzed_images(tmp_path):
    outcomes = run_cases(image_cases(tmp_path, 200))
    assert outcomes["refused"] > 30 and outcomes["ok"] > 5, outcomes  # the mutations reach both outcomes


def test_fuzzed_dataset_zips(tmp_path):
    outcomes = run_cases(zip_cases(tmp_path, 150))
    assert outcomes["refused"] > 20 and outcomes["ok"] > 0, outcomes  # a zip's CRCs catch most damage


def test_fuzzed_dataset_json(tmp_path):
    outcomes = run_cases(label_cases(tmp_path, 150))
    assert outcomes["refused"] > 20 and outcomes["ok"] > 5, outcomes


def test_fuzzed_checkpoints(small_checkpoint, tmp_path):
    outcomes = run_cases(checkpoint_cases(small_checkpoint, tmp_path, 60))
    assert outcomes["refused"] > 20 and outcomes["ok"] > 2, outcomes


def test_fuzzed_official_pickles(tmp_path, official_names):
    outcomes = run_cases(official_cases(tmp_path, official_names, 40))
    assert outcomes["refused"] > 10, outcomes


@pytest.mark.parametrize("case", range(5))
def test_fuzzed_inputs_through_the_command_line(case, small_checkpoint, tmp_path, capsys):
    """A damaged data folder, zip, dataset.json and checkpoint each, through `ada`: exit 0, or exit 1
    with one `error:` line."""
    rng = random.Random(100 + case)
    corpus = image_corpus()
    data = tmp_path / "data"
    data.mkdir()
    for k in range(3):
        (data / f"img{k}.png").write_bytes(corpus[0][1])
    dry_run = ["train", "--cfg", "tiny", "--outdir", str(tmp_path / "runs"), "-n", "--data"]
    if case == 0:
        (data / "img1.png").write_bytes(mutate(rng, corpus[1][1]))
        args = [*dry_run, str(data)]
    elif case == 1:
        (tmp_path / "data.zip").write_bytes(mutate(rng, dataset_zip()))
        args = [*dry_run, str(tmp_path / "data.zip"), "--cond=1"]
    elif case == 2:
        (data / "dataset.json").write_bytes(random_dataset_json(rng, [f"img{k}.png" for k in range(3)]))
        args = [*dry_run, str(data), "--cond=1"]
    else:
        ckpt = torch.load(small_checkpoint, weights_only=True)
        damage_structure(rng, ckpt)
        torch.save(ckpt, tmp_path / "damaged.pt")
        args = ["generate", "--network", str(tmp_path / "damaged.pt"), "--seeds", "0-1", "--outdir", str(tmp_path)]
    try:
        with time_limit(f"command-line case {case}"):
            main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert (code, errors) == (0, []) or (code == 1 and len(errors) == 1 and errors[0].startswith("error:")), errors
