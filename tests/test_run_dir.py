"""A run directory through the command line: snapshot names that never collide, continuing a run
from its directory alone, the dry run checking what a start checks, the summary that ends a run,
and the progress bar that only a terminal gets.

The runs are tiny: 8 images of 16 px, batch 4, one step per tick and a snapshot every tick.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import zipfile
from pathlib import Path

import pytest

from ada.checkpoint import latest_snapshot, recorded_nimg, snapshot_tag
from ada.cli import main
from ada.files import read_jsonl
from tests.conftest import REPO, write_images

RUN = ["--cfg", "tiny", "--data", "lfw-faces16", "--subset", "8", "--batch", "4", "--tick", "0.004", "--snap", "1",
       "--aug", "noaug"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def listing(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished 2-step run (0.008 kimg), started from another working directory than the data's."""
    outdir = tmp_path_factory.mktemp("runs")
    result = cli(*RUN, "--kimg", "0.008", "--outdir", str(outdir), cwd=outdir)
    assert result.returncode == 0, result.stderr
    (run,) = outdir.iterdir()
    return run, result


# ----- snapshot names -----


def test_snapshot_names_are_distinct_official_where_free_and_sort_in_training_order(tmp_path):
    names = []
    for nimg in (16, 48, 80, 96, 1024, 1500, 2000, 4032, 8064):
        name = f"network-snapshot-{snapshot_tag(tmp_path, nimg)}.pt"
        assert not (tmp_path / name).exists()
        (tmp_path / name).write_bytes(b"")
        names.append(name)
    assert [n.removeprefix("network-snapshot-").removesuffix(".pt") for n in names] == [
        "000000", "000000_048", "000000_080", "000000_096", "000001", "000001_500", "000002", "000004", "000008"]
    assert sorted(names) == names


def test_resume_picks_the_newest_snapshot_by_its_recorded_progress_not_its_name(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    newest = latest_snapshot(run)
    assert newest.name == "network-snapshot-000000_008.pt" and recorded_nimg(newest) == 8
    # Swap the names: the name that sorts last now holds the first snapshot.
    first = run / "network-snapshot-000000.pt"
    assert recorded_nimg(first) == 4
    newest.rename(run / "swap")
    first.rename(newest)
    (run / "swap").rename(first)
    assert sorted(p.name for p in run.glob("network-snapshot-*"))[-1] == newest.name
    assert latest_snapshot(run) == first and recorded_nimg(first) == 8


# ----- the end of a run -----


def test_a_run_ends_with_a_summary_whose_commands_work(finished, tmp_path):
    run, result = finished
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("Finished at "))
    assert lines[first].startswith("Finished at 0.008 kimg of 0.008 (0.008 kimg trained in")
    summary = dict(re.fullmatch(r"  (final snapshot|sample grid|reals \| fakes|generate|continue) +(.*)", line).groups()
                   for line in lines[first + 1:])
    assert list(summary) == ["final snapshot", "sample grid", "reals | fakes", "generate", "continue"]
    assert Path(summary["reals | fakes"]) == run / "reals_and_fakes.png" and (run / "reals_and_fakes.png").is_file()
    assert Path(summary["final snapshot"]) == latest_snapshot(run)
    assert Path(summary["sample grid"]) == run / "fakes000000_008.png" and (run / "fakes000000_008.png").is_file()
    generate = shlex.split(summary["generate"])
    assert generate[:2] == ["ada", "generate"] and generate[-2] == "--outdir"
    out = tmp_path / "generated"
    done = subprocess.run([sys.executable, "-m", "ada", *generate[1:-1], str(out)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list(out.glob("seed*.png"))) == 16
    # The continue command names the script as it was started and extends the run in place (run below).
    command = shlex.split(summary["continue"])
    assert command == ["python", str(REPO / "train.py"), "--resume", str(run), "--kimg", "0.016"]


# ----- continuing a run from its directory -----


def test_resume_run_dir_alone_continues_with_the_stored_options(finished, tmp_path, capsys):
    run = tmp_path / "runs" / finished[0].name
    shutil.copytree(finished[0], run)
    before = json.loads((run / "training_options.json").read_text())
    stats_before = read_jsonl(run / "stats.jsonl")
    # No other flag; a working directory of its own; --kimg extends the run; how it runs may change.
    result = cli("--resume", str(run), "--kimg", "0.016", "--workers", "0", "--snap", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run.name]  # in place
    after = json.loads((run / "training_options.json").read_text())
    assert {k: v for k, v in after.items() if k not in ("kimg", "snap")} == {
        k: v for k, v in before.items() if k not in ("kimg", "snap")}
    assert (after["kimg"], after["snap"], after["resume"], after["cfg"], after["batch"]) == (0.016, 2, None, "tiny", 4)
    stats = read_jsonl(run / "stats.jsonl")
    assert stats[: len(stats_before)] == stats_before and stats[-1]["kimg"] == pytest.approx(0.016)
    assert recorded_nimg(latest_snapshot(run)) == 16
    assert "Finished at 0.016 kimg of 0.016 (0.008 kimg trained in" in result.stdout
    # Finished again: continuing needs a larger --kimg, and says so.
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(run)])
    line = capsys.readouterr().err.strip()
    assert "is at 0.016 kimg, which --kimg=0.016 already reaches" in line and "--kimg=0.032" in line


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--data", "lfw-faces"], "--data=lfw-faces would change the run"),
        (["--cfg", "cpu"], "--cfg=cpu would change the run"),
        (["--batch", "8"], "--batch=8 would change the run in"),
        (["--gamma", "1"], "--gamma=1.0 would change the run"),
        (["--aug", "ada"], "--aug=ada would change the run"),
        (["--subset", "9"], "--subset=9 would change the run"),
        (["--set", "loss.pl_weight=0"], "--set loss.pl_weight=0.0 would change the run"),
        (["--lecam", "0.1"], "--lecam=0.1 would change the run"),
        (["--aug", "diffaug"], "--aug=diffaug would change the run"),
        (["--apa", "1"], "--apa=True would change the run"),
    ],
)
def test_resume_run_dir_refuses_a_flag_that_would_change_the_run(finished, capsys, args, shown):
    run = finished[0]
    before = listing(run)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(run), "--kimg", "1", *args])
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and shown in lines[0], lines
    assert f"fine-tune into a new run with --resume={latest_snapshot(run)}" in lines[0]
    assert listing(run) == before


def test_resume_run_dir_accepts_the_flags_it_was_started_with(finished, capsys):
    """Repeating the original command with --resume added is a continuation, not a change."""
    main(["train", *RUN, "--kimg", "0.012", "--outdir", str(finished[0].parent), "--resume", str(finished[0]),
          "--dry-run"])
    assert f"the run would go to {finished[0]}; nothing written" in capsys.readouterr().out


def test_resume_run_dir_refuses_another_outdir(finished, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(finished[0]), "--kimg", "1", "--outdir", str(tmp_path)])
    assert f"a continued run stays in {finished[0]}; leave --outdir out" in capsys.readouterr().err


# ----- the dry run -----


def test_dry_run_prints_the_values_the_run_would_use(finished, tmp_path, capsys):
    main(["train", *RUN, "--kimg", "0.008", "-n", "--val", "0.01", "--outdir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    options = json.loads(out[out.index("{\n"): out.index("\n}\n") + 2])
    assert "dry_run" not in options
    assert options["aug"]["ada_kimg"] == 500.0 and options["batch_gpu"] == 4
    assert "Validation:   1 image withheld for r_v" in out
    assert "Networks:     G " in out and not (tmp_path / "runs").exists()
    # Fine-tuning on other data: the faster ADA reaction of transfer runs is what the run would use.
    other = tmp_path / "other"
    write_images(other, 8, 16)
    main(["train", "--cfg", "tiny", "--data", str(other), "--resume", str(latest_snapshot(finished[0])), "-n",
          "--outdir", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert '"ada_kimg": 100.0' in out and "Fine-tuning from" in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_checks_the_resume_checkpoint_and_the_networks(finished, tmp_path, capsys):
    dataset_zip = tmp_path / "faces.zip"
    with zipfile.ZipFile(dataset_zip, "w") as archive:
        archive.writestr("00000/img00000000.png", b"not really")
    start = ["train", *RUN, "-n", "--outdir", str(tmp_path / "runs")]

    def error(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main([*args])
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert exit_info.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    assert "missing.pt: no such checkpoint file or run directory" in error(
        *start, "--resume", str(tmp_path / "missing.pt"))
    line = error(*start, "--resume", str(dataset_zip))
    assert "faces.zip is a zip archive but not a checkpoint" in line and "PytorchStreamReader" not in line
    assert "--freezed=99 exceeds the discriminator's" in error(*start, "--freezed", "99")
    assert "already reaches" in error("train", "--resume", str(finished[0]), "-n")
    assert not (tmp_path / "runs").exists()


# ----- the progress bar -----


def test_progress_bar_only_on_a_terminal(finished, tmp_path):
    """In a pseudo-terminal the tick has a bar with images/s and ETAs; piped output (the fixture's) has
    only the tick lines."""
    assert "img/s" not in finished[1].stdout + finished[1].stderr and "\r" not in finished[1].stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))  # rows, columns
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *RUN, "--kimg", "0.012", "--tick", "0.008",
         "--outdir", str(tmp_path / "runs")],
        stdin=follower, stdout=follower, stderr=follower, cwd=tmp_path,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the terminal closes when the process ends
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=600) == 0
    output = b"".join(chunks).decode(errors="replace")
    assert "tick 1" in output and "img/s" in output and "tick ETA" in output and "end ETA" in output
    assert "kimg 0.004/0.012" in output
    # The tick lines are still there, whole.
    assert [line for line in output.splitlines() if line.startswith("tick 1 ") and "sec/kimg" in line]
