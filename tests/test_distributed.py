"""Distributed training on CPU with gloo: two ranks against one process, torchrun end to end, and a
rank that fails.

Two-rank jobs are started with `ada.distributed.launch_local` (what `--gpus 2` does); their
worker functions live at module level so the spawned processes can import them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ada import distributed
from ada.distributed import DistContext, RankEnv, rank_env
from ada.errors import UserError
from ada.files import read_jsonl
from ada.launch import resolve_config, split_dataset, with_world_size
from ada.training import TickStats, Trainer
from tests.conftest import REPO

STEPS = 4
BATCH = 8
# A narrower network than the tiny preset: these tests check arithmetic agreement, not image quality.
SMALL = {"channel_base": 256, "channel_max": 32, "z_dim": 32, "w_dim": 32}

# Settings under which 2 ranks with 4 images each compute what 1 process with 8 computes, to float
# rounding. Everything else (latents, labels, data order, gradient averaging, the r_t sums, w_avg) is
# shared or reduced by design; these knobs are the ones that are per rank by design:
EXACT = {
    "data": "lfw-faces16", "batch": BATCH, "seed": 3, "workers": 0,
    # Minibatch-stddev groups are formed within each rank's batch (as in the official code), from strided
    # samples i, i+N/G, ...; with groups of 1 the layout is the same for any split.
    "model": {**SMALL, "mbstd_group": 1},
    "loss": {
        "style_mixing": 0.0,  # the mixing cutoff and second latent come from each rank's own RNG
        "pl_weight": 0.0,  # path-length probes are per-rank noise on each rank's first half-batch
        "d_reg_interval": 2,  # lazy R1 runs at steps 0 and 2, so a lazy phase is averaged too
    },
    # p = 0 makes the pipe the identity, whatever each rank draws; p is updated once, after the last step,
    # from the r_t signs of all steps on all ranks.
    "aug": {"mode": "ada", "p": 0.0, "ada_interval": STEPS, "target": 0.05, "ada_kimg": 1.0},
}
# Every per-rank random source on: the ranks must still agree exactly on everything they share.
REALISTIC = {
    "data": "lfw-faces16", "batch": BATCH, "seed": 5, "workers": 0,
    "model": {**SMALL, "mbstd_group": 2},
    "loss": {"g_reg_interval": 2, "d_reg_interval": 2},
    # p starts inside (0, 1) and moves by 0.08 every step (r_t, a multiple of 1/4 here, never equals 0.6).
    "aug": {"mode": "ada", "p": 0.3, "ada_interval": 1, "ada_kimg": 0.1},
}


def train_steps(overrides: dict, dist: DistContext, noise: bool) -> dict:
    """STEPS training steps; the state every rank should share, and the tick statistics."""
    cfg, dataset = resolve_config("tiny", with_world_size(overrides, dist.world_size))
    train_set, val_set = split_dataset(cfg, dataset)
    trainer = Trainer(cfg, train_set, val_set, dist, log=lambda msg: None)
    if not noise:
        # Per-pixel noise inputs are drawn from each rank's own RNG.
        for net in (trainer.G, trainer.G_ema):
            for layer in net.synthesis.modules():
                if hasattr(layer, "use_noise"):
                    layer.use_noise = False
    stats = TickStats()
    p_history, r_t_history = [], []
    for _ in range(STEPS):
        trainer.train_step(stats)
        p_history.append(trainer.controller.p)
        r_t_history.append(trainer.controller.last_r_t)
    return {
        "G": trainer.G.state_dict(), "D": trainer.D.state_dict(), "G_ema": trainer.G_ema.state_dict(),
        "p": p_history, "r_t": r_t_history, "pl_mean": trainer.loss.pl_mean.clone(),
        "skipped": trainer.progress.skipped_steps, "means": stats.means(dist.all_reduce_mean),
    }


def two_rank_worker(out_dir: str) -> None:
    job = rank_env()
    dist = distributed.init_process_group(job)
    for name, overrides, noise in (("exact", EXACT, False), ("realistic", REALISTIC, True)):
        torch.save(train_steps(overrides, dist, noise), Path(out_dir) / f"{name}{job.rank}.pt")
    # A stop request seen by one rank only (rank 1 here) must stop both.
    stop = {"one": dist.any_rank(job.rank == 1), "none": dist.any_rank(False)}
    torch.save(stop, Path(out_dir) / f"stop{job.rank}.pt")
    distributed.shutdown()


def failing_worker() -> None:
    """Rank 1 raises in its third step while rank 0 waits for it in a collective."""
    job = rank_env()
    dist = distributed.init_process_group(job)
    cfg, dataset = resolve_config("tiny", with_world_size(REALISTIC, dist.world_size))
    trainer = Trainer(cfg, *split_dataset(cfg, dataset), dist, log=lambda msg: None)
    for step in range(100):
        if job.rank == 1 and step == 2:
            raise RuntimeError("rank 1 fails on purpose")
        trainer.train_step(TickStats())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ranks")
    distributed.launch_local(2, two_rank_worker, (str(out),))
    return {p.stem: torch.load(p, weights_only=True) for p in out.glob("*.pt")}


def assert_states(a: dict, b: dict, exact: bool) -> None:
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            if exact:
                assert torch.equal(a[net][key], b[net][key]), f"{net}.{key}"
            else:
                torch.testing.assert_close(a[net][key], b[net][key], rtol=1e-4, atol=1e-5, msg=f"{net}.{key}")


def test_two_ranks_equal_one_process_with_the_global_batch(two_ranks):
    single = train_steps(EXACT, DistContext(), noise=False)
    rank0, rank1 = two_ranks["exact0"], two_ranks["exact1"]
    assert_states(rank0, rank1, exact=True)
    assert_states(single, rank0, exact=False)
    # Training moved the weights (and w_avg), so the comparison is not between two initial states.
    assert not torch.equal(single["G"]["mapping.w_avg"], torch.zeros_like(single["G"]["mapping.w_avg"]))
    assert single["skipped"] == rank0["skipped"] == 0
    # r_t summed over all ranks' signs is exactly the single-process r_t, and so is the p it set.
    assert rank0["r_t"] == rank1["r_t"] == single["r_t"]
    assert rank0["p"] == rank1["p"] == single["p"]
    assert single["p"][-1] > 0  # the update after the last step moved p
    assert single["means"].keys() == rank0["means"].keys() >= {"loss_G", "loss_D", "loss_D_r1"}
    for key, value in single["means"].items():
        assert rank0["means"][key] == rank1["means"][key] == pytest.approx(value, rel=1e-4, abs=1e-6)


def test_two_ranks_agree_exactly_with_every_per_rank_random_source_on(two_ranks):
    rank0, rank1 = two_ranks["realistic0"], two_ranks["realistic1"]
    assert_states(rank0, rank1, exact=True)
    # r_t is taken over both ranks' signs at every step (each rank's own would differ), so p is the same.
    assert rank0["r_t"] == rank1["r_t"] and None not in rank0["r_t"]
    assert rank0["p"] == rank1["p"]
    assert rank0["p"][0] != pytest.approx(0.3)  # the controller ran
    assert torch.equal(rank0["pl_mean"], rank1["pl_mean"]) and float(rank0["pl_mean"]) > 0
    assert rank0["means"] == rank1["means"]


def test_a_failing_rank_ends_the_job_non_zero_without_hanging(tmp_path):
    script = "import test_distributed as t; from ada import distributed; distributed.launch_local(2, t.failing_worker)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "rank 1 fails on purpose" in result.stderr  # the rank's own traceback
    assert re.search(r"rank [01] of 2 failed", result.stderr)  # whichever exited first


def test_torchrun_runs_train_py_end_to_end_into_one_run_directory(tmp_path):
    outdir = tmp_path / "runs"
    args = ["--cfg", "tiny", "--data", "lfw-faces16", "--kimg", "0.016", "--tick", "0.016", "--batch", "8",
            "--outdir", str(outdir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(REPO / "train.py"), *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = outdir.iterdir()
    assert result.stdout.count("Run directory:") == 1
    stats = read_jsonl(run / "stats.jsonl")
    assert [s["kimg"] for s in stats] == [0.008, 0.016]  # tick 0 ends after the first step
    assert (run / "network-snapshot-000000.pt").is_file()
    options = (run / "training_options.json").read_text()
    assert '"gpus": 2' in options


def test_rank_env_reads_torchrun_variables():
    assert rank_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert rank_env(env) == RankEnv(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert rank_env({"RANK": "1", "WORLD_SIZE": "2"}) == RankEnv(1, 2, 1, 2)
    with pytest.raises(UserError, match="RANK"):
        rank_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="inconsistent"):
        rank_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_gpus_may_only_repeat_the_torchrun_world_size():
    assert with_world_size({"batch": 8}, 2) == {"batch": 8, "gpus": 2}
    assert with_world_size({"gpus": 2}, 2)["gpus"] == 2
    with pytest.raises(UserError, match="leave --gpus out"):
        with_world_size({"gpus": 4}, 2)


def test_batch_that_does_not_split_across_ranks_is_refused():
    with pytest.raises(UserError, match="--batch=6 is not divisible by --gpus=4"):
        resolve_config("tiny", with_world_size({"data": "lfw-faces16", "batch": 6}, 4))


def test_a_stop_request_on_one_rank_stops_every_rank(two_ranks):
    assert two_ranks["stop0"] == two_ranks["stop1"] == {"one": True, "none": False}
