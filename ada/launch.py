"""From command-line options to a running Trainer: resolve the config, open the data, pick the
run directory and devices, and start the process(es).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from ada import config as config_mod
from ada import config_checks, distributed, rundir
from ada.config import TrainConfig
from ada.data import open_dataset
from ada.distributed import DistContext
from ada.errors import UserError
from ada.files import run_dir_lock
from ada.loader import split_validation, take_subset


def preset_for_machine(preset: str, quiet: bool = False) -> str:
    """`--cfg=auto` on a machine without CUDA is the cpu preset: the official auto schedule (25000 kimg,
    batch 32, hundreds of MB per snapshot) is sized for GPUs. Says so unless `quiet`."""
    if preset != "auto" or torch.cuda.is_available():
        return preset
    if not quiet:
        print(f"No CUDA GPU: --cfg=auto uses the '{config_mod.CPU_PRESET}' preset; choose another with --cfg=NAME "
              f"({', '.join(config_mod.available_presets())}) or --cfg=FILE.yaml")
    return config_mod.CPU_PRESET


def resolve_config(preset: str | None, overrides: dict[str, Any], quiet: bool = False) -> tuple[TrainConfig, Any]:
    """The configuration a start would use, validated, and the opened dataset: (cfg, dataset).

    A new run: the preset (`None` means auto), its auto rules at the data's resolution, then the
    user's flags. A continued run (`--resume RUN_DIR`): the run's stored options, with the flags
    that may change (`ada.rundir.continue_config`).
    """
    if preset is not None or rundir.continued_run(overrides) is None:
        preset = preset_for_machine(preset or "auto", quiet=quiet)
    run_dir = rundir.continued_run(overrides)
    if run_dir is not None:
        cfg = rundir.continue_config(run_dir, preset, overrides)
        config_checks.validate(cfg)
        dataset = open_dataset(cfg.data, cond=cfg.cond, mirror=cfg.mirror)
        config_checks.check_against_data(cfg, dataset.resolution)
    else:
        # The flags are checked before the data is opened; the auto rules need its resolution.
        cfg = config_mod.resolve(preset, overrides, resolution=None)
        config_checks.validate(cfg)
        dataset = open_dataset(cfg.data, cond=cfg.cond, mirror=cfg.mirror)
        config_checks.check_against_data(cfg, dataset.resolution)
        if cfg.auto_rules:
            cfg = config_mod.resolve(preset, overrides, dataset.resolution)
            config_checks.validate(cfg)
    cfg.data = rundir.canonical_data(cfg.data)
    # Resolved, so that the printed and recorded options are the ones the run uses.
    cfg.batch_gpu = cfg.batch_gpu or cfg.batch // cfg.gpus
    return cfg, dataset


def split_dataset(cfg: TrainConfig, dataset: Any) -> tuple[Any, Any]:
    train_set, val_set = split_validation(dataset, cfg.val)
    return take_subset(train_set, cfg.subset, seed=cfg.seed), val_set


def run_dir_for(cfg: TrainConfig, dataset_name: str) -> Path:
    """A continued run (`--resume RUN_DIR`) stays in its directory; any other gets a new numbered one,
    so a run that another starts from is never written to."""
    continued = rundir.continued_run({"resume": cfg.resume})
    if continued is not None:
        return continued
    return rundir.make_run_dir(Path(cfg.outdir), rundir.run_description(cfg, dataset_name))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe(cfg: TrainConfig, dataset: Any, train_set: Any, val_set: Any) -> str:
    info = dataset.info
    lines = [
        f"Dataset:      {info.name} ({info.num_images} images, {info.resolution}x{info.resolution}, "
        f"{info.channels} channel{'s' if info.channels > 1 else ''}, {info.c_dim} classes)",
        f"Training:     {len(train_set.names)} images{' (x2 mirrored)' if cfg.mirror else ''}",
        f"Validation:   {_count(0 if val_set is None else len(val_set.names), 'image')} withheld for r_v",
    ]
    return "\n".join(lines)


def train(preset: str | None, overrides: dict[str, Any], dry_run: bool = False,
          command: str = "ada train") -> Path | None:
    """The `ada train` command: returns the run directory (None for a dry run, and on ranks other than 0).

    `preset` is --cfg (None: not given), `overrides` the other options the user gave, `command` how
    the user started it, for the commands the end-of-run summary prints.

    A run stopped early by SIGTERM or SIGINT ends, after its final snapshot and its summary, in
    SystemExit(128 + signal), the shell's code for death by that signal, so a scheduler can tell
    preemption from completion.

    Three ways to start: one process; `--gpus N`, which spawns N local ranks that each come back
    here; or torchrun (one machine or several), whose variables make this process one rank of
    the job. `--batch` is the global batch in all three; each rank takes batch / world_size.
    """
    from ada.build import environment_setup
    from ada.training import Trainer

    job = distributed.rank_env()
    rank0 = job is None or job.rank == 0
    if job is not None:
        overrides = with_world_size(overrides, job.world_size)
    cfg, dataset = resolve_config(preset, overrides, quiet=not rank0)
    train_set, val_set = split_dataset(cfg, dataset)
    # Metrics compare against every real image, without the x-flips, as the official *_full metrics do.
    eval_set = dataset.unmirrored()
    if dry_run:
        if rank0:
            # Everything a start checks, the --resume checkpoint and the networks included, on the CPU.
            trainer = Trainer(cfg, train_set, val_set, DistContext(world_size=cfg.gpus), eval_set=eval_set)
            check_kimg_left(trainer)
            print(json.dumps(cfg.to_dict(), indent=2))
            print(describe(cfg, dataset, train_set, val_set))
            print(f"Networks:     G {_millions(trainer.G)}, D {_millions(trainer.D)} parameters")
            print(f"Dry run: the run would go to {planned_run_dir(cfg, dataset.name)}; nothing written.")
        return None
    if job is None and cfg.gpus > 1:
        check_local_gpus(cfg.gpus)
        print(f"Starting {cfg.gpus} local processes ({local_backend()}), one rank each.")
        # The ranks resolve the same options again; --cfg as resolved here, so that they say nothing more.
        ranks_preset = cfg.cfg if rundir.continued_run(overrides) is None else None
        args = (ranks_preset, with_world_size(overrides, cfg.gpus), False, command)
        return distributed.launch_local(cfg.gpus, train, args)
    if rank0:
        print(describe(cfg, dataset, train_set, val_set))
    environment_setup(cfg)
    dist = distributed.init_process_group(job) if job is not None else DistContext(device=distributed.default_device())
    # One process at a time in a run directory: a second resume of it would interleave its log and
    # snapshots. A continued run's directory is locked before its snapshot is read, a new one as made.
    with ExitStack() as held:
        continued = rundir.continued_run({"resume": cfg.resume})
        if continued is not None and dist.rank == 0:
            held.enter_context(run_dir_lock(continued))
        # Build (and so check the --resume checkpoint) before any directory is created.
        trainer = Trainer(cfg, train_set, val_set, dist, eval_set=eval_set)
        check_kimg_left(trainer)
        start_kimg = trainer.progress.cur_nimg / 1000
        run_dir = None
        if dist.rank == 0:
            run_dir = run_dir_for(cfg, dataset.name)
            print(f"Run directory: {run_dir}")
            if continued is None:
                held.enter_context(run_dir_lock(run_dir))
        trainer.run(run_dir)
        if run_dir is not None:  # the summary goes to log.txt too, so it is written under the lock
            trainer.log(rundir.summary(
                run_dir, start_kimg=start_kimg, end_kimg=trainer.progress.cur_nimg / 1000, target_kimg=cfg.kimg,
                seconds=time.time() - trainer.start_time, snapshot=trainer.last_snapshot, grid=trainer.last_grid,
                stop_signal=trainer.stop_signal, command=command,
            ))
    distributed.shutdown()
    # Rank 0 alone, as it writes last: a rank's non-zero exit makes torchrun stop the others.
    if trainer.stop_signal is not None and dist.rank == 0:
        raise SystemExit(128 + trainer.stop_signal)
    return run_dir


def check_kimg_left(trainer: Any) -> None:
    """A resumed run must have images left to train on before --kimg."""
    at = trainer.progress.cur_nimg / 1000
    if at >= trainer.cfg.kimg:
        raise UserError(
            f"{trainer.resumed_from} is at {at:g} kimg, which --kimg={trainer.cfg.kimg:g} already reaches; give a "
            f"larger --kimg to train on (e.g. --kimg={2 * at:g})"
        )


def _millions(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f} M"


def planned_run_dir(cfg: TrainConfig, dataset_name: str) -> str:
    """Where a start would write: the continued run's directory, or a new numbered one in --outdir."""
    continued = rundir.continued_run({"resume": cfg.resume})
    if continued is not None:
        return str(continued)
    return str(Path(cfg.outdir) / f"NNNNN-{rundir.run_description(cfg, dataset_name)}")


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
