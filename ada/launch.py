"""From command-line options to a running Trainer: resolve the config, open the data, pick the
run directory and devices, and start the process(es).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ada import config as config_mod
from ada import distributed
from ada.config import TrainConfig
from ada.data import open_dataset, split_validation, take_subset
from ada.distributed import DistContext
from ada.errors import UserError
from ada.files import run_dir_lock


def resolve_config(preset: str, overrides: dict[str, Any]) -> tuple[TrainConfig, Any]:
    """Preset, then auto rules from the data, then the user's flags; validated. Returns (cfg, dataset)."""
    # The flags are checked before the data is opened; the auto rules need its resolution.
    cfg = config_mod.resolve(preset, overrides, resolution=None)
    config_mod.validate(cfg)
    dataset = open_dataset(cfg.data, cond=cfg.cond, mirror=cfg.mirror)
    config_mod.check_against_data(cfg, dataset.resolution)
    if cfg.auto_rules:
        cfg = config_mod.resolve(preset, overrides, dataset.resolution)
        config_mod.validate(cfg)
    return cfg, dataset


def split_dataset(cfg: TrainConfig, dataset: Any) -> tuple[Any, Any]:
    train_set, val_set = split_validation(dataset, cfg.val)
    return take_subset(train_set, cfg.subset, seed=cfg.seed), val_set


def run_dir_for(cfg: TrainConfig, dataset_name: str, transfer: bool) -> Path:
    """Resuming a run directory on its own data continues in it; anything else, a fine-tune from a
    run directory included, gets a new numbered directory, so the source run is never written to."""
    from ada.training import make_run_dir, run_description

    if cfg.resume and Path(cfg.resume).is_dir() and not transfer:
        return Path(cfg.resume)
    return make_run_dir(Path(cfg.outdir), run_description(cfg, dataset_name))


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def describe(cfg: TrainConfig, dataset: Any, train_set: Any, val_set: Any) -> str:
    info = dataset.info
    lines = [
        f"Dataset:      {info.name} ({info.num_images} images, {info.resolution}x{info.resolution}, "
        f"{info.channels} channel{'s' if info.channels > 1 else ''}, {info.c_dim} classes)",
        f"Training:     {len(train_set.names)} images{' (x2 mirrored)' if cfg.mirror else ''}",
        f"Validation:   {0 if val_set is None else len(val_set.names)} images withheld for r_v",
    ]
    return "\n".join(lines)


def train(preset: str, overrides: dict[str, Any], dry_run: bool = False) -> Path | None:
    """The `ada train` command: returns the run directory (None for a dry run, and on ranks other than 0).

    A run stopped early by SIGTERM or SIGINT ends, after its final snapshot, in SystemExit(128 + signal),
    the shell's code for death by that signal, so a scheduler can tell preemption from completion.

    Three ways to start: one process; `--gpus N`, which spawns N local ranks that each come back
    here; or torchrun (one machine or several), whose variables make this process one rank of
    the job. `--batch` is the global batch in all three; each rank takes batch / world_size.
    """
    from ada.training import Trainer, environment_setup

    job = distributed.rank_env()
    if job is not None:
        overrides = with_world_size(overrides, job.world_size)
    cfg, dataset = resolve_config(preset, overrides)
    train_set, val_set = split_dataset(cfg, dataset)
    rank0 = job is None or job.rank == 0
    if dry_run:
        if rank0:
            print(json.dumps(cfg.to_dict(), indent=2))
            print(describe(cfg, dataset, train_set, val_set))
            print("Dry run: nothing written.")
        return None
    if job is None and cfg.gpus > 1:
        check_local_gpus(cfg.gpus)
        print(f"Starting {cfg.gpus} local processes ({local_backend()}), one rank each.")
        return distributed.launch_local(cfg.gpus, train, (preset, with_world_size(overrides, cfg.gpus)))
    if rank0:
        print(describe(cfg, dataset, train_set, val_set))
    environment_setup(cfg)
    dist = distributed.init_process_group(job) if job is not None else DistContext(device=default_device())
    # Build (and so check the --resume checkpoint) before any directory is created.
    # Metrics compare against every real image, without the x-flips, as the official *_full metrics do.
    eval_set = dataset.subset(list(range(len(dataset.names))))
    eval_set.mirror = False
    trainer = Trainer(cfg, train_set, val_set, dist, eval_set=eval_set)
    run_dir = None
    if dist.rank == 0:
        run_dir = run_dir_for(cfg, dataset.name, trainer.transfer)
        print(f"Run directory: {run_dir}")
    # One process at a time in a run directory: a second resume of it would interleave its log.
    with run_dir_lock(run_dir) if run_dir is not None else nullcontext():
        trainer.run(run_dir)
    distributed.shutdown()
    # Rank 0 alone, as it writes last: a rank's non-zero exit makes torchrun stop the others.
    if trainer.stop_signal is not None and dist.rank == 0:
        raise SystemExit(128 + trainer.stop_signal)
    return run_dir


def with_world_size(overrides: dict[str, Any], world_size: int) -> dict[str, Any]:
    """--gpus is the job's process count; under torchrun the job decides it, so --gpus may only repeat it."""
    given = overrides.get("gpus")
    if given is not None and given != world_size:
        raise UserError(
            f"--gpus={given} but this job has {world_size} process{'es' if world_size != 1 else ''} "
            "(WORLD_SIZE from torchrun); leave --gpus out when starting with torchrun"
        )
    return {**overrides, "gpus": world_size}


def local_backend() -> str:
    return "NCCL on CUDA" if torch.cuda.is_available() else "gloo on CPU"


def check_local_gpus(gpus: int) -> None:
    """--gpus N on one machine: N CUDA devices, or (without CUDA) N CPU processes with gloo."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else None
    if count is not None and gpus > count:
        raise UserError(f"--gpus={gpus} but this machine shows {count} CUDA device{'s' if count != 1 else ''}")
