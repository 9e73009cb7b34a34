"""A run's snapshots: the training state one holds, writing it, and continuing from one (--resume).

A --resume source is either our checkpoint or an official network pickle. Our checkpoint of a
run on the same images (by fingerprint) continues that run exactly: networks, optimisers,
controllers, loss state, progress and every random stream. On other images, and from an official
pickle, only the weights are taken and the run starts at 0 kimg: a transfer run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ada import checkpoint as ckpt_io
from ada.data import DatasetInfo
from ada.errors import UserError

if TYPE_CHECKING:
    from ada.training import Trainer


@dataclass
class ResumeSource:
    """What a --resume file provides: networks always, the training state only to continue the same data."""

    path: Path
    G_kwargs: dict
    D_kwargs: dict
    G: dict
    D: dict
    G_ema: dict
    transfer: bool
    state: dict[str, Any] | None


def read_resume_source(spec: str, data: str, info: DatasetInfo, say: Any) -> ResumeSource:
    """Continue a run on the same data exactly; on other data (transfer) take the weights only.

    `data` is --data as given, for the message; `say` prints to the console.
    """
    path = ckpt_io.resolve_checkpoint_path(spec)
    if ckpt_io.is_our_checkpoint(path):
        state = ckpt_io.load_checkpoint(path)
        kwargs = state["G_kwargs"]
        check_compatible(path, kwargs["img_resolution"], kwargs["img_channels"], kwargs["c_dim"], info)
        same_data = state["dataset"].get("fingerprint") == info.fingerprint
        if not same_data and Path(spec).is_dir():
            raise UserError(
                f"--data={data} no longer holds the images the run in {spec} was trained on (they "
                f"changed); to train on them as they are, fine-tune into a new run: --resume={path}"
            )
        source = ResumeSource(
            path, state["G_kwargs"], state["D_kwargs"], state["G"], state["D"], state["G_ema"],
            transfer=not same_data or bool(state.get("transfer", False)), state=state if same_data else None,
        )
        if same_data:
            say(f"Resuming from {path} at {state['progress']['cur_nimg'] / 1000:g} kimg")
        else:
            say(f"Fine-tuning from {path} (trained on other data): weights only, from 0 kimg")
        return source
    from ada.official import load_official_pickle

    imported = load_official_pickle(path)
    G = imported.G
    check_compatible(path, G.img_resolution, G.img_channels, G.c_dim, info)
    say(f"Imported official network pickle {path}:\n{imported.report}")
    return ResumeSource(
        path, G.init_kwargs, imported.D.init_kwargs, G.state_dict(), imported.D.state_dict(),
        imported.G_ema.state_dict(), transfer=True, state=None,
    )


def check_compatible(path: Path, resolution: int, channels: int, c_dim: int, info: Any) -> None:
    """Refuses networks trained on images of another shape or label count than --data's, saying how to match."""
    if (resolution, channels, c_dim) == (info.resolution, info.channels, info.c_dim):
        return
    convert = []
    if resolution != info.resolution:
        convert.append(f"--resolution {resolution}")
    if channels != info.channels:
        convert.append(f"--channels {channels}")
    if convert:
        fix = f"convert the data with `ada dataset --source DATA --dest out.zip {' '.join(convert)}`"
    else:
        fix = "leave --cond out (the network is unconditional)" if c_dim == 0 else (
            f"give --cond=1 with labels of {c_dim} classes")
    raise UserError(
        f"{path} was trained on {resolution}x{resolution}x{channels} images with {c_dim} classes, but "
        f"--data is {info.resolution}x{info.resolution}x{info.channels} with {info.c_dim} classes; "
        f"{fix}, or choose a matching checkpoint"
    )


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Adam's moments and step counts from a checkpoint, keeping this optimiser's fused implementation.

    `load_state_dict` also takes the saved implementation flags; a checkpoint written by an unfused
    Adam would switch off the fused kernel that the device-side step skip relies on.
    """
    implementation = [{key: group[key] for key in ("fused", "foreach")} for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, flags in zip(opt.param_groups, implementation, strict=True):
        group.update(flags)


def rng_states(trainer: Trainer) -> dict[str, list[torch.Tensor] | None]:
    """Every rank's CPU (and CUDA) RNG state. A collective when distributed: call it on every rank."""
    device, dist = trainer.device, trainer.dist
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {
        "torch": dist.gather_states(torch.get_rng_state()),
        "cuda": None if cuda is None else dist.gather_states(cuda),
    }


def training_state(trainer: Trainer, rng: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole training state; `rng` from `rng_states`, which with several ranks every rank must
    have called (default: gather now, fine for one process).

    The augmentation probability is the controller's alone: checkpoints written while the pipe kept
    a copy of it also hold "augment_pipe", which nothing reads.
    """
    t = trainer
    return {
        "G_kwargs": t.G.init_kwargs,
        "D_kwargs": t.D.init_kwargs,
        "G": t.G.state_dict(),
        "D": t.D.state_dict(),
        "G_ema": t.G_ema.state_dict(),
        "opt_G": t.phase("Gmain").opt.state_dict(),
        "opt_D": t.phase("Dmain").opt.state_dict(),
        "controller": t.controller.state_dict(),
        "apa_controller": None if t.apa_controller is None else t.apa_controller.state_dict(),
        "lecam": None if t.loss.lecam is None else t.loss.lecam.state_dict(),
        "pl_mean": t.loss.pl_mean.detach().cpu(),
        "loss_scalers": {phase.name: phase.scaler.state_dict() for phase in t.phases},
        "progress": asdict(t.progress),
        "rng": {**(rng or rng_states(t)), "shared": t.shared_gen.get_state()},
        "transfer": t.transfer,
        "config": t.cfg.to_dict(),
        "dataset": asdict(t.train_set.info),
    }


def restore_training_state(trainer: Trainer, path: Path, state: dict[str, Any]) -> None:
    """Everything but the networks (already loaded) from our checkpoint of a run on the same data."""
    t = trainer
    saved_freezed = state["config"].get("freezed", 0)
    if saved_freezed != t.cfg.freezed:
        raise UserError(
            f"{path} was trained with --freezed={saved_freezed}; resume it with the same value "
            "(or fine-tune from it on other data)"
        )
    opt_G, opt_D = t.phase("Gmain").opt, t.phase("Dmain").opt
    ckpt_io.check_optimizer_state(path, state["opt_G"], opt_G, "opt_G")
    ckpt_io.check_optimizer_state(path, state["opt_D"], opt_D, "opt_D")
    load_optimizer_state(opt_G, state["opt_G"])
    load_optimizer_state(opt_D, state["opt_D"])
    t.controller.load_state_dict(state["controller"])
    # Absent from checkpoints written before these options, or by a run without them: they start afresh.
    if t.apa_controller is not None and state.get("apa_controller") is not None:
        t.apa_controller.load_state_dict(state["apa_controller"])
    if t.loss.lecam is not None and state.get("lecam") is not None:
        t.loss.lecam.load_state_dict(state["lecam"])
    t.loss.pl_mean.copy_(state["pl_mean"])
    for phase in t.phases:
        if phase.name in state.get("loss_scalers", {}):
            phase.scaler.load_state_dict(state["loss_scalers"][phase.name])
    progress_type = type(t.progress)
    known = {f.name for f in fields(progress_type)}
    t.progress = progress_type(**{k: v for k, v in state["progress"].items() if k in known})
    # The snapshot was taken at the end of its tick: continue with the next one.
    t.progress.cur_tick += 1
    t.progress.tick_start_nimg = t.progress.cur_nimg
    t.shared_gen.set_state(state["rng"]["shared"])
    rank = t.dist.rank
    torch.set_rng_state(state["rng"]["torch"][rank % len(state["rng"]["torch"])])
    if t.device.type == "cuda" and state["rng"].get("cuda"):
        torch.cuda.set_rng_state(state["rng"]["cuda"][rank % len(state["rng"]["cuda"])], t.device)


def save_snapshot(trainer: Trainer, path: Path, rng: dict[str, Any] | None = None, final: bool = False) -> None:
    """Write a snapshot; never one with non-finite weights, never over the last good one half-written.

    A failed write is a warning while training goes on; a failed final snapshot ends the run with an error.
    """
    t = trainer
    last = f"the last good snapshot is {t.last_snapshot}" if t.last_snapshot else "there is no snapshot yet"
    try:
        if not all(bool(torch.isfinite(p).all()) for net in (t.G, t.D, t.G_ema) for p in net.parameters()):
            raise UserError(f"not writing {path}: the networks hold non-finite weights")
        ckpt_io.save_checkpoint(path, training_state(t, rng))
    except UserError as exc:
        if final:
            raise UserError(f"{exc}; {last}") from None
        t.say(f"{exc}; {last}; training goes on and will try again at the next snapshot")
        return
    t.last_snapshot = path
