"""Long runs survive and bad input is refused.

A killed run loses at most the work since its last snapshot and continues exactly where that
snapshot left off, keeping every intact line of its log; one process at a time trains in a run
directory; SIGTERM and Ctrl-C end with a final snapshot and exit 128 + signal; files get the
mode the umask gives; non-finite steps are skipped
and, if they persist, stop the run with the last good snapshot intact; a failed write keeps the
previous snapshot and says so; checkpoints never run code; bad datasets are refused through the
command line; the same seed gives the same steps, bit for bit.

The runs are tiny: 16 px, batch 4, 8 training images, one step per tick, a snapshot every tick,
adaptive augmentation with a fast controller and a seed for which p leaves 0 at the first step,
so a lost p would show.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import ada.distributed
import ada.loss
import ada.rundir
import ada.training
from ada.checkpoint import FORMAT, VERSION, latest_snapshot, load_checkpoint, load_generator
from ada.cli import main
from ada.dataset_tool import convert
from ada.distributed import DistContext
from ada.errors import UserError
from ada.files import append_jsonl, atomic_write_text, read_jsonl
from ada.launch import resolve_config, split_dataset
from ada.monitor import measure_overfitting
from ada.training import TickStats, Trainer
from tests.conftest import REPO, png_header_only, write_images

STEP_NIMG = 4
RUN = [
    "--cfg", "tiny", "--data", "lfw-faces16", "--subset", "8", "--batch", str(STEP_NIMG), "--tick", "0.004",
    "--snap", "1", "--aug", "ada", "--target", "0.05", "--ada-kimg", "0.1", "--ada-interval", "1", "--seed", "2",
]
OVERRIDES = {
    "data": "lfw-faces16", "subset": 8, "batch": STEP_NIMG, "tick": 0.004, "snap": 1, "seed": 2,
    "aug": {"mode": "ada", "target": 0.05, "ada_kimg": 0.1, "ada_interval": 1},
}
TOTAL_NIMG = 20  # 5 steps, 5 ticks, each with a snapshot
TOTAL_KIMG = str(TOTAL_NIMG / 1000)
SNAPSHOT = "network-snapshot-000000.pt"  # the first snapshot (tick 0); later ones below 1 kimg add _NNN
# Stats fields that depend on the clock or the machine, not on the training.
UNTIMED = {"timestamp", "sec_per_tick", "sec_per_kimg", "mem_cpu_gb", "mem_gpu_gb"}


# ----- helpers -----


def train(outdir: Path, *extra: str) -> Path:
    main(["train", *RUN, "--outdir", str(outdir), *extra])
    return only_run(outdir)


def only_run(outdir: Path) -> Path:
    (run,) = outdir.iterdir()
    return run


def start_cli(args: list[str], log: Path, **popen) -> subprocess.Popen:
    """`python -m ada ARGS` in its own process, output to `log`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ada", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=log.parent, **popen,
        )


def wait_for_first_snapshot(outdir: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not list(outdir.glob(f"*/{SNAPSHOT}")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before its first snapshot:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no snapshot after {timeout} s:\n{log.read_text()}")
        time.sleep(0.02)


def untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in UNTIMED}


def assert_stats_clean(path: Path, total_kimg: float, first_tick: int = 0) -> list[dict]:
    """Every line complete JSON, ticks numbered on from `first_tick`, kimg strictly increasing to the end."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.decode().splitlines()]
    assert [r["tick"] for r in records] == list(range(first_tick, first_tick + len(records)))
    kimgs = [r["kimg"] for r in records]
    assert all(a < b for a, b in zip(kimgs, kimgs[1:], strict=False)), kimgs
    assert kimgs[-1] == pytest.approx(total_kimg)
    return records


def assert_same_training_state(a: dict, b: dict) -> None:
    """Networks, optimisers, p and controller, path-length mean, progress and RNG: bit for bit."""
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for name in a[net]:
            assert torch.equal(a[net][name], b[net][name]), f"{net}.{name}"
    for opt in ("opt_G", "opt_D"):
        for key, state in a[opt]["state"].items():
            for field, value in state.items():
                assert torch.equal(value, b[opt]["state"][key][field]), f"{opt} {key} {field}"
    assert a["controller"] == b["controller"]
    assert torch.equal(a["pl_mean"], b["pl_mean"])
    assert a["progress"] == b["progress"]
    assert torch.equal(a["rng"]["shared"], b["rng"]["shared"])
    assert all(torch.equal(x, y) for x, y in zip(a["rng"]["torch"], b["rng"]["torch"], strict=True))


def build_trainer(log=lambda message: None, **extra) -> Trainer:
    cfg, dataset = resolve_config("tiny", {**OVERRIDES, **extra})
    train_set, val_set = split_dataset(cfg, dataset)
    return Trainer(cfg, train_set, val_set, DistContext(), log=log)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def assert_clean_exit(exc_info, capsys, *patterns: str) -> str:
    """Exit code 1 and one line on stderr naming the problem."""
    assert exc_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:")
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


# ----- an uninterrupted run: what every interrupted run must end up equal to -----


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    run = train(tmp_path_factory.mktemp("reference"), "--kimg", TOTAL_KIMG)
    return run, load_checkpoint(latest_snapshot(run))


def test_reference_run_moves_p(reference):
    """Precondition of the resume tests: p has left its start (0) at the first snapshots, from which the
    interrupted runs resume, and keeps changing, so a p that was not restored would show."""
    run, final = reference
    ps = [r["p"] for r in assert_stats_clean(run / "stats.jsonl", TOTAL_NIMG / 1000)]
    assert ps[0] > 0 and ps[1] > 0 and len(set(ps)) > 2, ps
    assert final["progress"]["cur_nimg"] == TOTAL_NIMG and final["progress"]["cur_tick"] == 4


# ----- killed, stopped, resumed -----


def test_sigkill_after_first_snapshot_then_resume_continues_exactly(reference, tmp_path):
    ref_run, ref_final = reference
    outdir = tmp_path / "runs"
    log = tmp_path / "killed.log"
    proc = start_cli(["train", *RUN, "--kimg", TOTAL_KIMG, "--outdir", str(outdir)], log)
    try:
        wait_for_first_snapshot(outdir, proc, log)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    run = only_run(outdir)
    snap = load_checkpoint(latest_snapshot(run))
    resumed_at = snap["progress"]["cur_nimg"]
    assert 0 < resumed_at < TOTAL_NIMG
    assert snap["controller"]["p"] > 0  # p had moved: the resume must bring back this value, not 0
    # What a kill in the middle of a write leaves behind; the resume clears it.
    stale = run / f".{SNAPSHOT}.k1ll3d.tmp"
    stale.write_bytes(b"half a snapshot")

    main(["train", *RUN, "--kimg", TOTAL_KIMG, "--outdir", str(outdir), "--resume", str(run)])

    assert only_run(outdir) == run  # continued in place
    assert not stale.exists()
    final = load_checkpoint(latest_snapshot(run))
    assert final["progress"]["cur_nimg"] == TOTAL_NIMG
    stats = assert_stats_clean(run / "stats.jsonl", TOTAL_NIMG / 1000)
    ref_stats = read_jsonl(ref_run / "stats.jsonl")
    # The same ticks with the same losses, p, r_t and r_v as the run that was never killed ...
    assert [untimed(r) for r in stats] == [untimed(r) for r in ref_stats]
    # ... and the same networks, optimisers and random streams at the end.
    assert_same_training_state(final, ref_final)


def test_a_checkpoint_from_when_the_pipe_kept_a_copy_of_p_resumes_exactly(reference, tmp_path):
    """Checkpoints written while the augmentation pipe kept its own copy of p hold it under
    "augment_pipe"; the controller's p is the one restored, and the copy is ignored."""
    from ada.checkpoint import save_checkpoint

    ref_run, ref_final = reference
    old = load_checkpoint(ref_run / SNAPSHOT)
    assert "augment_pipe" not in old and old["controller"]["p"] > 0
    # As those versions wrote it: the pipe's float32 buffer, set at the start of the last step.
    old["augment_pipe"] = {"p": torch.tensor(0.0)}
    path = tmp_path / "old" / SNAPSHOT
    path.parent.mkdir()
    save_checkpoint(path, old)

    run = train(tmp_path / "runs", "--kimg", TOTAL_KIMG, "--resume", str(path))

    final = load_checkpoint(latest_snapshot(run))
    assert final["progress"]["cur_nimg"] == TOTAL_NIMG and "augment_pipe" not in final
    ref_stats = read_jsonl(ref_run / "stats.jsonl")
    assert [untimed(r) for r in read_jsonl(run / "stats.jsonl")] == [untimed(r) for r in ref_stats[1:]]
    # A file resumed into a new run directory counts the lines of that directory's stats.jsonl.
    assert final["progress"].pop("stats_lines") == ref_final["progress"]["stats_lines"] - 1
    assert_same_training_state(final, {**ref_final, "progress": {
        k: v for k, v in ref_final["progress"].items() if k != "stats_lines"}})


def test_sigterm_stops_after_the_step_with_a_final_snapshot_and_resumes_exactly(reference, tmp_path):
    ref_run, ref_final = reference
    outdir = tmp_path / "runs"
    log = tmp_path / "stopped.log"
    proc = start_cli(["train", *RUN, "--kimg", "1", "--outdir", str(outdir)], log)
    try:
        wait_for_first_snapshot(outdir, proc, log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    output = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, output  # not 0: a scheduler must tell preemption from completion
    assert "Stopped on request; final snapshot written." in output
    run = only_run(outdir)
    snap = load_checkpoint(latest_snapshot(run))
    stopped_at = snap["progress"]["cur_nimg"]
    # At least one step after the first snapshot (step 1), and far from --kimg 1.
    assert STEP_NIMG < stopped_at < TOTAL_NIMG and stopped_at % STEP_NIMG == 0
    stats = assert_stats_clean(run / "stats.jsonl", stopped_at / 1000)
    assert snap["progress"]["stats_lines"] == len(stats)

    main(["train", *RUN, "--kimg", TOTAL_KIMG, "--outdir", str(outdir), "--resume", str(run)])

    stats = assert_stats_clean(run / "stats.jsonl", TOTAL_NIMG / 1000)
    assert [untimed(r) for r in stats] == [untimed(r) for r in read_jsonl(ref_run / "stats.jsonl")]
    assert_same_training_state(load_checkpoint(latest_snapshot(run)), ref_final)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="--gpus 2 on a CPU needs torch.distributed with gloo")
@pytest.mark.parametrize(
    ("signum", "group"),
    # A scheduler may signal only the process it started; a terminal's Ctrl-C reaches every process of the job.
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigterm-to-the-launcher-alone", "ctrl-c-to-every-process"],
)
def test_a_stop_of_a_gpus_run_reaches_every_rank_and_ends_with_a_final_snapshot(tmp_path, signum, group):
    """`--gpus 2` passes a stop on to its ranks and waits for them, then exits 128 + signal as a single
    process does; a stop that reaches the ranks twice (from the terminal and from the launcher) is one stop."""
    outdir = tmp_path / "runs"
    log = tmp_path / "stopped.log"
    # A session of its own: the signal reaches the launcher (or its group) alone, and the cleanup every process.
    proc = start_cli(["train", *RUN, "--gpus", "2", "--kimg", "1", "--outdir", str(outdir)], log,
                     start_new_session=True)
    try:
        wait_for_first_snapshot(outdir, proc, log)
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.wait(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # ranks that a launcher killed at once would leave behind
        except ProcessLookupError:
            pass
        proc.wait()
    output = log.read_text()
    assert proc.returncode == 128 + signum, output
    assert "Stopped on request; final snapshot written." in output
    run = only_run(outdir)
    stopped_at = load_checkpoint(latest_snapshot(run))["progress"]["cur_nimg"]
    assert STEP_NIMG < stopped_at < 1000, output
    assert_stats_clean(run / "stats.jsonl", stopped_at / 1000)
    assert "Stopped by SIG" in (run / "log.txt").read_text()


def test_a_repeated_sigterm_is_one_stop_and_a_second_ctrl_c_quits_at_once():
    stop = ada.distributed.StopRequested()
    stop.install()
    try:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's, then the --gpus launcher's
            os.kill(os.getpid(), signal.SIGINT)  # a terminal's Ctrl-C reaches the ranks too
        except KeyboardInterrupt:
            pytest.fail("one stop that reached the process more than once made it quit at once")
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.uninstall()


def test_ctrl_c_stops_after_the_step_with_a_final_snapshot(reference, tmp_path):
    """Also a resume from a snapshot file, which starts a new run directory with a stats file of its own."""
    ref_run, _ = reference
    messages = []

    def log(message: str) -> None:
        messages.append(message)
        if message.startswith("tick ") and len([m for m in messages if m.startswith("tick ")]) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    trainer = build_trainer(log=log, kimg=1.0, resume=str(latest_snapshot(ref_run)))
    trainer.run(tmp_path)
    snap = load_checkpoint(latest_snapshot(tmp_path))
    # The interrupt came at the end of the first tick: one more step, then the final snapshot.
    assert snap["progress"]["cur_nimg"] == TOTAL_NIMG + 2 * STEP_NIMG
    assert messages[-1] == "Stopped on request; final snapshot written."
    assert trainer.stop_signal == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers given back
    # The snapshot counts the lines of this directory's stats file, so a resume from here trims right.
    stats = assert_stats_clean(tmp_path / "stats.jsonl", 0.028, first_tick=5)
    assert snap["progress"]["stats_lines"] == len(stats) == 2


def test_ctrl_c_through_the_command_line_exits_130_after_the_final_snapshot(tmp_path, monkeypatch, capsys):
    real_step = Trainer.train_step

    def step_then_ctrl_c(self, tick_stats):
        real_step(self, tick_stats)
        if self.progress.batch_idx == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)
    with pytest.raises(SystemExit) as exc_info:
        train(tmp_path / "runs", "--kimg", "1")
    assert exc_info.value.code == 128 + signal.SIGINT
    run = only_run(tmp_path / "runs")
    assert load_checkpoint(latest_snapshot(run))["progress"]["cur_nimg"] == 2 * STEP_NIMG
    # The end-of-run summary came before the exit, saying why the run ended, and is in the log too.
    summary = f"Stopped by SIGINT at {2 * STEP_NIMG / 1000:g} kimg of 1"
    assert summary in capsys.readouterr().out and summary in (run / "log.txt").read_text()
    assert f"--resume {run}\n" in (run / "log.txt").read_text()  # continue: no --kimg extension for a stopped run


def test_a_damaged_stats_line_is_set_aside_and_every_later_line_kept(reference, tmp_path):
    ref_run, _ = reference
    run = tmp_path / "runs" / ref_run.name
    shutil.copytree(ref_run, run)
    lines = (run / "stats.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 5
    damaged = b'{"tick": 1, "kimg": 0.\x00\x17\xff garbage\n'
    (run / "stats.jsonl").write_bytes(lines[0] + damaged + b"".join(lines[2:]))

    main(["train", *RUN, "--kimg", str((TOTAL_NIMG + STEP_NIMG) / 1000), "--outdir", str(run.parent),
          "--resume", str(run)])

    stats = read_jsonl(run / "stats.jsonl")
    assert [r["tick"] for r in stats] == [0, 2, 3, 4, 5]
    assert stats[:4] == [json.loads(line) for line in (lines[0], *lines[2:])]
    assert (run / "stats.jsonl.corrupt").read_bytes() == damaged
    assert "1 damaged line(s) of" in (run / "log.txt").read_text()
    # The snapshot counts the kept lines: a later resume trims to them and nothing else.
    assert load_checkpoint(latest_snapshot(run))["progress"]["stats_lines"] == 5


def test_one_process_at_a_time_trains_in_a_run_directory(reference, tmp_path, capsys):
    """A second resume of a run directory that is training refuses, naming the process that holds it;
    the lock goes with that process, however it ends (here SIGKILL)."""
    ref_run, _ = reference
    run = tmp_path / "runs" / ref_run.name
    shutil.copytree(ref_run, run)
    log = tmp_path / "first.log"
    first = start_cli(["train", *RUN, "--kimg", "1", "--outdir", str(run.parent), "--resume", str(run)], log)
    try:
        deadline = time.monotonic() + 300
        while len(read_jsonl(run / "stats.jsonl")) <= 5:  # past the reference's 5 ticks: training, locked
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with pytest.raises(SystemExit) as exc_info:
            main(["train", *RUN, "--kimg", TOTAL_KIMG, "--outdir", str(run.parent), "--resume", str(run)])
        assert_clean_exit(exc_info, capsys, str(run), f"process {first.pid} is training in it")
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    end_kimg = (load_checkpoint(latest_snapshot(run))["progress"]["cur_nimg"] + STEP_NIMG) / 1000
    main(["train", *RUN, "--kimg", str(end_kimg), "--outdir", str(run.parent), "--resume", str(run)])
    assert only_run(run.parent) == run
    assert_stats_clean(run / "stats.jsonl", end_kimg)


def test_runs_started_together_take_the_next_free_number(tmp_path, monkeypatch):
    outdir = tmp_path / "runs"
    outdir.mkdir()
    taken = outdir / "00000-desc"
    real_iterdir = Path.iterdir

    def list_then_lose_the_race(self):
        entries = list(real_iterdir(self))
        if self == outdir and not taken.exists():
            taken.mkdir()  # another process took the number just after this one listed the folder
        return iter(entries)

    monkeypatch.setattr(Path, "iterdir", list_then_lose_the_race)
    assert ada.rundir.make_run_dir(outdir, "desc") == outdir / "00001-desc"


def test_a_listing_that_lags_behind_does_not_hold_up_a_new_run(tmp_path, monkeypatch):
    """On a network file system a listing can miss directories just made: the next number is tried
    without listing again, which with a lagging listing would never end."""
    outdir = tmp_path / "runs"
    for taken in ("00000-desc", "00001-desc"):
        (outdir / taken).mkdir(parents=True)
    listings = []

    def stale_listing(self):
        listings.append(self)
        assert len(listings) < 5, "the folder is listed again and again"
        return iter([])

    monkeypatch.setattr(Path, "iterdir", stale_listing)
    assert ada.rundir.make_run_dir(outdir, "desc") == outdir / "00002-desc"
    assert len(listings) == 1


def test_written_files_get_the_mode_the_umask_gives(tmp_path):
    """As a plain open() would: snapshots, grids, options, zips and generated images alike, and the
    stats log rewritten by a resume."""
    old_umask = os.umask(0o027)
    try:
        run = train(tmp_path / "runs", "--kimg", "0.008")
        main(["train", *RUN, "--kimg", "0.012", "--outdir", str(tmp_path / "runs"), "--resume", str(run)])
        main(["generate", "--network", str(run), "--seeds", "0-1", "--outdir", str(tmp_path / "gen")])
        write_images(tmp_path / "src", 2, 16)
        convert(str(tmp_path / "src"), str(tmp_path / "data.zip"), 16)
    finally:
        os.umask(old_umask)
    written = [*run.iterdir(), *(tmp_path / "gen").iterdir(), tmp_path / "data.zip"]
    assert {"stats.jsonl", SNAPSHOT, "reals.png", "training_options.json", "seed0001.png"} <= {p.name for p in written}
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {oct(0o640)}, modes


def test_atomic_writes_leave_the_process_umask_alone(tmp_path, monkeypatch):
    """Reading the umask means setting it, for every thread of the process (wandb's, TensorBoard's)."""
    old_umask = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError("os.umask called while other threads may create files")

        monkeypatch.setattr(os, "umask", no_umask)
        atomic_write_text(tmp_path / "new.txt", "new")
        (tmp_path / "old.txt").write_text("old")
        (tmp_path / "old.txt").chmod(0o604)
        atomic_write_text(tmp_path / "old.txt", "replaced")
    finally:
        monkeypatch.undo()
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640  # 0o666 less the umask, as open() gives
    assert stat.S_IMODE((tmp_path / "old.txt").stat().st_mode) == 0o604  # a replaced file keeps its mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.txt", "old.txt"]  # no temporary left


# ----- non-finite losses -----


def test_non_finite_steps_are_skipped_and_counted(monkeypatch):
    trainer = build_trainer()
    real_g_loss, real_path_lengths = ada.loss.g_loss, ada.loss.path_lengths

    # Step 0 runs all four phases: a NaN path length skips Greg and must not reach pl_mean.
    monkeypatch.setattr(ada.loss, "path_lengths", lambda *a: real_path_lengths(*a) * float("nan"))
    trainer.train_step(TickStats())
    trainer.check_health()  # the counters stay on the device until the host reads them
    assert trainer.progress.skipped_steps == 1 and trainer.bad_streak["Greg"] == 1
    assert trainer.loss.pl_mean.item() == 0.0
    monkeypatch.setattr(ada.loss, "path_lengths", real_path_lengths)

    # Step 1 (Gmain and Dmain): a NaN generator loss leaves G as it was; D still trains.
    G_before, D_before = params(trainer.G), params(trainer.D)
    monkeypatch.setattr(ada.loss, "g_loss", lambda logits: real_g_loss(logits) * float("nan"))
    trainer.train_step(TickStats())
    trainer.check_health()
    assert trainer.progress.skipped_steps == 2 and trainer.bad_streak["Gmain"] == 1
    assert all(torch.equal(p, G_before[n]) for n, p in trainer.G.named_parameters())
    assert any(not torch.equal(p, D_before[n]) for n, p in trainer.D.named_parameters())

    # A good step ends the streak and trains G again.
    monkeypatch.setattr(ada.loss, "g_loss", real_g_loss)
    trainer.train_step(TickStats())
    trainer.check_health()
    assert trainer.progress.skipped_steps == 2 and trainer.bad_streak["Gmain"] == 0
    assert any(not torch.equal(p, G_before[n]) for n, p in trainer.G.named_parameters())
    assert all(torch.isfinite(p).all() for p in trainer.G.parameters())


def make_g_loss_nan_from_step_2(monkeypatch) -> list:
    """G's loss turns NaN from its third call (step 2) on; returns the list of calls so far."""
    real_g_loss = ada.loss.g_loss
    calls = []

    def g_loss_bad_from_step_2(logits):
        calls.append(1)
        return real_g_loss(logits) * (float("nan") if len(calls) > 2 else 1.0)

    monkeypatch.setattr(ada.loss, "g_loss", g_loss_bad_from_step_2)
    return calls


def test_persistent_non_finite_loss_stops_the_run_with_the_last_snapshot_intact(tmp_path, monkeypatch, capsys):
    """Only G goes bad (D's steps stay finite): the run must still stop, exit 1, and keep its last snapshot."""
    monkeypatch.setattr(ada.training, "MAX_CONSECUTIVE_BAD_STEPS", 2)
    make_g_loss_nan_from_step_2(monkeypatch)
    outdir = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc_info:
        train(outdir, "--kimg", "1")
    run = only_run(outdir)
    last = latest_snapshot(run)
    assert_clean_exit(exc_info, capsys, "training diverged", "2 Gmain steps in a row", str(last))
    # Step 2 was skipped and counted, and the snapshot after it holds the last good (unchanged) G;
    # step 3 was the second bad one in a row, and nothing was written after it.
    snap = load_checkpoint(last)
    assert snap["progress"]["cur_nimg"] == 3 * STEP_NIMG and snap["progress"]["skipped_steps"] == 1
    assert all(torch.isfinite(t).all() for net in ("G", "D", "G_ema") for t in snap[net].values())
    stats = read_jsonl(run / "stats.jsonl")
    assert len(stats) == snap["progress"]["stats_lines"] == 3
    assert [s["skipped_steps"] for s in stats] == [0, 0, 1]


def test_divergence_inside_a_long_tick_is_caught_at_the_next_health_check(tmp_path, monkeypatch, capsys):
    """The bad-step counters live on the device and are read every HEALTH_CHECK_INTERVAL steps, not
    only at tick ends: a run does not train on for a whole tick after it diverged."""
    monkeypatch.setattr(ada.training, "MAX_CONSECUTIVE_BAD_STEPS", 2)
    calls = make_g_loss_nan_from_step_2(monkeypatch)
    outdir = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc_info:
        train(outdir, "--kimg", "1", "--tick", "1")
    check = ada.training.HEALTH_CHECK_INTERVAL
    # Steps 2 .. check-1 were bad; the check after step check-1 stopped the run.
    assert len(calls) == check
    run = only_run(outdir)
    last = latest_snapshot(run)
    assert last == run / SNAPSHOT  # nothing was written after tick 0
    assert_clean_exit(exc_info, capsys, f"{check - 2} Gmain steps in a row", f"by {check * STEP_NIMG / 1000:.3f} kimg",
                      str(last))
    snap = load_checkpoint(last)
    assert snap["progress"]["cur_nimg"] == STEP_NIMG  # tick 0's snapshot, written before anything went wrong


def test_no_snapshot_with_non_finite_weights(tmp_path):
    warnings = []
    trainer = build_trainer(log=warnings.append)
    trainer.run_dir = tmp_path
    good = tmp_path / "network-snapshot-000000.pt"
    trainer.save_snapshot(good)
    before = good.read_bytes()
    with torch.no_grad():
        next(trainer.G.parameters()).fill_(float("inf"))
    trainer.save_snapshot(good)
    assert good.read_bytes() == before
    assert any("non-finite weights" in w and str(good) in w for w in warnings)
    with pytest.raises(UserError, match="non-finite weights.*the last good snapshot is"):
        trainer.save_snapshot(good, final=True)


# ----- failed writes -----


def test_failed_snapshot_write_keeps_the_previous_one_and_says_so(tmp_path, monkeypatch):
    warnings = []
    trainer = build_trainer(log=warnings.append)
    trainer.run_dir = tmp_path
    good = tmp_path / "network-snapshot-000000.pt"
    trainer.save_snapshot(good)
    before = good.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    trainer.save_snapshot(tmp_path / "network-snapshot-000001.pt")
    trainer.save_snapshot(good)
    (message,) = [w for w in warnings if "000001" in w]
    assert "No space left on device" in message and f"the last good snapshot is {good}" in message
    assert "training goes on" in message
    assert good.read_bytes() == before and not (tmp_path / "network-snapshot-000001.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(good)["progress"]["cur_nimg"] == 0
    with pytest.raises(UserError, match="No space left on device.*the last good snapshot is"):
        trainer.save_snapshot(good, final=True)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_full_disk_ends_a_run_with_a_clear_message_and_the_previous_snapshot_intact(reference, tmp_path):
    """A real failed write: a file size limit makes torch.save fail inside its own writer."""
    import resource

    run = tmp_path / "runs" / reference[0].name
    shutil.copytree(reference[0], run)
    last = latest_snapshot(run)
    before = last.read_bytes()
    stats_before = read_jsonl(run / "stats.jsonl")
    limit = len(before) // 4  # room for stats, logs and grids, not for a snapshot

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log = tmp_path / "full.log"
    proc = start_cli(["train", *RUN, "--kimg", str((TOTAL_NIMG + STEP_NIMG) / 1000), "--outdir", str(run.parent),
                      "--resume", str(run)], log, preexec_fn=small_disk)
    assert proc.wait(timeout=600) == 1, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output
    error = output.strip().splitlines()[-1]
    assert error.startswith("error: could not write") and "File too large" in error
    assert f"the last good snapshot is {last}" in error
    assert last.read_bytes() == before and latest_snapshot(run) == last
    assert load_checkpoint(last)["progress"]["cur_nimg"] == TOTAL_NIMG
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    # The stats line past the snapshot is there and complete; a later resume trims it.
    stats = assert_stats_clean(run / "stats.jsonl", (TOTAL_NIMG + STEP_NIMG) / 1000)
    assert stats[:-1] == stats_before


def test_failed_append_leaves_no_partial_line(tmp_path, monkeypatch):
    """A full disk in the middle of a line: the file is cut back, and later lines stay readable."""
    path = tmp_path / "stats.jsonl"
    append_jsonl(path, {"tick": 0})
    real_write = os.write

    def write_half_then_fail(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", write_half_then_fail)
    with pytest.raises(UserError, match="No space left on device"):
        append_jsonl(path, {"tick": 1, "padding": "x" * 100})
    monkeypatch.setattr(os, "write", real_write)
    append_jsonl(path, {"tick": 2})
    assert read_jsonl(path) == [{"tick": 0}, {"tick": 2}]


# ----- untrusted input -----


class RunsCode:
    """Unpickling this calls os.mkdir(marker): proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_checkpoint_with_a_code_payload_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": VERSION, "G": RunsCode(marker)}, evil)
    evil_pickle = tmp_path / "evil.pkl"  # not a zip: goes to the official-pickle importer
    evil_pickle.write_bytes(pickle.dumps({"G_ema": RunsCode(marker)}))
    with pytest.raises(UserError, match="evil.pt"):
        load_checkpoint(evil)
    for path in (evil, evil_pickle):
        with pytest.raises(UserError):
            load_generator(str(path))
        with pytest.raises(SystemExit) as exc_info:
            main(["train", *RUN, "--kimg", "0.008", "--outdir", str(tmp_path / "runs"), "--resume", str(path)])
        assert_clean_exit(exc_info, capsys, path.name)
        with pytest.raises(SystemExit) as exc_info:
            main(["generate", "--network", str(path), "--seeds", "0", "--outdir", str(tmp_path / "gen")])
        assert_clean_exit(exc_info, capsys, path.name)
    assert not marker.exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "gen").exists()


def zip_with(tmp_path: Path, bad_name: str) -> Path:
    """A dataset zip of good images plus one entry named `bad_name`."""
    images = write_images(tmp_path / "src", 4, 16)
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for img in images:
            zf.write(img, f"00000/{img.name}")
        zf.writestr(bad_name, images[0].read_bytes())
    return path


def folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    """An image folder of good images plus one file `name` holding `data`."""
    folder = tmp_path / "data"
    write_images(folder, 4, 16)
    (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize(
    ("make", "patterns"),
    [
        (lambda d: zip_with(d, "../outside.png"), ["data.zip", "unsafe zip entry", "'../outside.png'"]),
        (lambda d: zip_with(d, "/etc/evil.png"), ["data.zip", "unsafe zip entry", "'/etc/evil.png'"]),
        # Over our limit and PIL's warning level; then over PIL's own refusal level.
        (lambda d: folder_with(d, "huge.png", png_header_only(12000, 12000)),
         ["huge.png", "megapixel limit", "12000x12000"]),
        (lambda d: folder_with(d, "bomb.png", png_header_only(20000, 20000)), ["bomb.png", "megapixel limit"]),
    ],
    ids=["zip-parent-entry", "zip-absolute-entry", "huge-image", "pil-bomb"],
)
def test_bad_datasets_are_refused_through_the_cli(tmp_path, capsys, make, patterns):
    data = make(tmp_path)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exc_info:
        warnings.simplefilter("always")
        main(["train", *RUN, "--data", str(data), "--kimg", "0.008", "--outdir", str(tmp_path / "runs")])
    assert_clean_exit(exc_info, capsys, *patterns)
    assert not caught, [str(w.message) for w in caught]  # nothing but the one line
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "outside.png").exists()


def test_symlinks_out_of_the_data_folder_are_not_followed_through_the_cli(tmp_path, capsys):
    write_images(tmp_path / "data", 8, 16)
    write_images(tmp_path / "elsewhere", 2, 16, seed=1)
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "elsewhere" / "img0000.png")
    (tmp_path / "data" / "linkdir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "data" / "inside.png").symlink_to(tmp_path / "data" / "img0000.png")
    main(["train", *RUN, "--data", str(tmp_path / "data"), "--outdir", str(tmp_path / "runs"), "--dry-run"])
    assert "Dataset:      data (9 images, 16x16" in capsys.readouterr().out  # 8 + the link that stays inside


def test_loader_workers_survive_ctrl_c(tmp_path):
    """Ctrl-C reaches every process of the group; only the trainer may act on it."""
    import multiprocessing

    from ada.data import open_dataset
    from ada.loader import infinite_loader

    write_images(tmp_path / "data", 8, 16)
    dataset = open_dataset(str(tmp_path / "data"), cache_bytes=0)  # decoded per batch, in a worker
    batches = infinite_loader(dataset, 4, 0, 1, seed=0, workers=1)
    first = next(batches)
    for worker in multiprocessing.active_children():
        os.kill(worker.pid, signal.SIGINT)
    time.sleep(0.5)
    for _ in range(4):  # past the prefetched batches
        assert next(batches)[0].shape == first[0].shape
    batches.close()


# ----- determinism -----


def test_same_seed_same_steps_bit_for_bit():
    """Two runs, one after the other in one process (Trainer seeds torch's global RNG). The first also
    measures r_v between its steps, as a tick end does: that must not change what training draws."""
    a = build_trainer()
    initial = copy.deepcopy(a.G.state_dict())
    a.train_step(TickStats())
    measure_overfitting(a)
    a.train_step(TickStats())
    state_a = a.checkpoint_state()
    b = build_trainer()
    for _ in range(2):
        b.train_step(TickStats())
    state_b = b.checkpoint_state()
    state_a["controller"]["last_r_v"] = None  # the one thing the measurement changes
    assert_same_training_state(state_a, state_b)
    assert state_a["controller"]["p"] > 0  # augmentation ran, with a moving p
    assert any(not torch.equal(t, initial[n]) for n, t in state_a["G"].items())  # and G trained
