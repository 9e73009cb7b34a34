"""Our checkpoint format: one torch file of plain tensors, numbers, strings, lists and dicts.

It loads with `torch.load(weights_only=True)`, which never runs code from the file, so a
checkpoint from a stranger is safe to open. It holds everything needed to continue a run
exactly: G, D and G_ema (with their constructor arguments), both optimisers, the
augmentation p and controller state (and APA's, and the LeCam anchors, where the run uses them),
the training progress, RNG states and the resolved configuration.

A file that is not such a checkpoint, or one damaged on disk, is refused before any network is
built: its structure (keys, types, network arguments, tensor shapes, finite values) is checked
first, and the message names the file and the previous snapshot to use instead. A resume checks
everything it restores (`load_checkpoint`); the tools that only run the generator check only
G_kwargs and G_ema (`load_generator`), so a generator-only export serves them too.
"""

from __future__ import annotations

import itertools
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ada.errors import UserError
from ada.files import atomic_write
from ada.networks import Discriminator, Generator

FORMAT = "ada-gan-checkpoint"
VERSION = 1
SNAPSHOT_PATTERN = re.compile(r"network-snapshot-(\d+)(_\d{3})?\.pt$")
# The most values (parameters and buffers) a network from a file may have: about ten times the
# official 1024 px generator (30 M). More is damage, and building it could take terabytes.
MAX_NETWORK_VALUES = 2**28
# StyleGAN2 maps with 2 or 8 layers; a mapping network far deeper is damage, and slow to even plan.
MAX_MAPPING_LAYERS = 64

# What every checkpoint holds, and of which type.
_FIELDS = {
    "G_kwargs": dict, "D_kwargs": dict, "G": dict, "D": dict, "G_ema": dict, "opt_G": dict, "opt_D": dict,
    "controller": dict, "pl_mean": torch.Tensor, "progress": dict, "rng": dict, "config": dict, "dataset": dict,
}


def snapshot_tag(run_dir: Path, nimg: int) -> str:
    """How the snapshot (and sample grid) at `nimg` images is named in `run_dir`.

    The official form, the whole kimg reached ('000004' for 4.032 kimg), unless a snapshot of this
    run already has it: then the images beyond it too ('000000_048' for 0.048 kimg), as with ticks
    shorter than 1 kimg. Later snapshots of a run always hold more images, so no name is reused and
    the names sort in training order.
    """
    official = f"{nimg // 1000:06d}"
    if not (run_dir / f"network-snapshot-{official}.pt").exists():
        return official
    return f"{official}_{nimg % 1000:03d}"


def snapshot_order(path: Path) -> tuple[int, int]:
    """Where a snapshot's name puts it in its run: whole kimg, then the images beyond it ('000004' was
    written before '000004_512'). The names of one run sort in training order (`snapshot_tag`)."""
    match = SNAPSHOT_PATTERN.match(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a snapshot name")
    return int(match[1]), int(match[2][1:]) if match[2] else -1


def recorded_nimg(path: Path) -> int | None:
    """The images a snapshot had trained on, read without loading its tensors (they are memory-mapped).

    None where it records no progress (a generator-only export named like a snapshot); the loader that
    reads it decides whether that is enough. A file that cannot be read at all is damaged.
    """
    if not path.is_file():  # a FIFO would block its reader forever
        raise damaged(path, "not a regular file: a pipe, socket or device")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # any damage: a cut zip, a foreign file, an object that is not data
        raise damaged(path, f"cannot read the progress it recorded: {_first_sentence(exc)}") from None
    progress = ckpt.get("progress") if isinstance(ckpt, dict) else None
    if not isinstance(progress, dict) or "cur_nimg" not in progress:
        return None
    try:
        return int(progress["cur_nimg"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise damaged(path, f"cannot read the progress it recorded: {_first_sentence(exc)}") from None


def _named_nimg(path: Path) -> int:
    """The images a snapshot's name says it had trained on, at least ('000004' is 4 kimg or a little more)."""
    kimg, beyond = snapshot_order(path)
    return kimg * 1000 + max(beyond, 0)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous snapshot as it was."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    atomic_write(Path(path), lambda f: torch.save(payload, f))


def latest_snapshot(run_dir: Path) -> Path | None:
    """The snapshot in `run_dir` that had trained on the most images (by its recorded progress, or by its
    name where it records none; between equal ones, the later name). A snapshot that cannot be read
    is refused as damaged."""
    snaps = [p for p in run_dir.iterdir() if SNAPSHOT_PATTERN.match(p.name)]

    def newness(path: Path) -> tuple[int, tuple[int, int]]:
        nimg = recorded_nimg(path)
        return (_named_nimg(path) if nimg is None else nimg), snapshot_order(path)

    return max(snaps, key=newness) if snaps else None


def previous_snapshot(path: Path) -> Path | None:
    """The snapshot written before `path` in its run directory, if there is one (by name: a damaged
    file's recorded progress may be unreadable, and the names of a run sort in training order)."""
    if not SNAPSHOT_PATTERN.match(path.name):
        return None
    try:
        earlier = [p for p in path.parent.iterdir()
                   if SNAPSHOT_PATTERN.match(p.name) and snapshot_order(p) < snapshot_order(path)]
    except OSError:
        return None
    return max((p for p in earlier if p.is_file()), key=snapshot_order, default=None)


def damaged(path: Path, detail: str) -> UserError:
    """The error for a checkpoint that cannot be used: what is wrong, and which snapshot to use instead."""
    previous = previous_snapshot(path)
    hint = (
        f"use the previous snapshot {previous} (move the damaged file aside to resume the run directory)"
        if previous else "there is no earlier snapshot next to it"
    )
    return UserError(f"{path} is a damaged checkpoint ({detail}); {hint}")


def resolve_checkpoint_path(spec: str) -> Path:
    """A checkpoint file, or a run directory meaning its latest snapshot; a regular file either way."""
    if not spec.strip():
        raise UserError("the checkpoint path is empty; give a checkpoint, a run directory or an official pickle")
    path = Path(spec).expanduser()
    if path.is_dir():
        snap = latest_snapshot(path)
        if snap is None:
            raise UserError(f"{spec}: the run directory holds no network-snapshot-*.pt to resume from")
        path = snap
    elif not path.exists():
        raise UserError(f"{spec}: no such checkpoint file or run directory")
    if not path.is_file():  # a FIFO would block its reader forever
        raise damaged(path, "not a regular file: a pipe, socket or device")
    return path


def is_our_checkpoint(path: Path) -> bool:
    """torch.save writes zip archives; official network pickles are plain pickles. A damaged (cut)
    zip is still ours: it starts like one, or carries our snapshot name."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04" or bool(SNAPSHOT_PATTERN.match(path.name))
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None


def _first_sentence(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(exc).__name__


def _check_torch_archive(path: Path) -> None:
    """A zip that torch.save did not write (a dataset zip, say) is named as such, not by PyTorch's reader."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
    except Exception:  # a cut or damaged zip, in any of many ways: torch.load reports it as damaged
        return
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in members):
        raise UserError(
            f"{path} is a zip archive but not a checkpoint (a dataset zip?); give a network-snapshot-*.pt, "
            "a run directory or an official network pickle (.pkl)"
        )


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Our checkpoint with everything a resume restores, its structure checked (`checkpoint_problem`);
    never runs code from the file."""
    ckpt = _read_checkpoint(path, map_location)
    problem = checkpoint_problem(ckpt)
    if problem:
        raise damaged(path, problem)
    return ckpt


def load_generator_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Our checkpoint as the tools read it: only G_kwargs and G_ema are needed, and only they are checked
    (`generator_problem`), so a generator-only export loads and damage elsewhere does not matter."""
    ckpt = _read_checkpoint(path, map_location)
    problem = generator_problem(ckpt)
    if problem:
        raise damaged(path, problem)
    return ckpt


def _read_checkpoint(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The dict a file of our format holds, unchecked beyond its format marker and version."""
    _check_torch_archive(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if refused is None:
            raise damaged(path, _first_sentence(exc)) from None
        raise UserError(
            f"refused to load {path}: it holds the Python object {refused.group(1)}, which a checkpoint "
            "never contains (nothing of it was run)"
        ) from None
    except Exception as exc:  # untrusted bytes fail in many ways: a cut zip, bad records, ...
        raise damaged(path, _first_sentence(exc)) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an ada-gan checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')} is not supported (expected {VERSION})")
    return ckpt


def _fields_problem(ckpt: dict[str, Any], fields: dict[str, type]) -> str | None:
    for key, kind in fields.items():
        if key not in ckpt:
            return f"it has no {key!r}"
        if not isinstance(ckpt[key], kind):
            return f"its {key!r} is a {type(ckpt[key]).__name__}, not a {kind.__name__}"
    return None


def _networks_problem(ckpt: dict[str, Any], networks: tuple[tuple[type, str, tuple[str, ...]], ...]) -> str | None:
    """Each (class, arguments key, state keys): the arguments planned on the meta device, the states
    against the planned shapes."""
    for cls, kwargs_key, states in networks:
        try:
            shapes = planned_state(cls, ckpt[kwargs_key])
        except ValueError as exc:
            return f"its {kwargs_key} do not describe a network: {exc}"
        for key in states:
            problem = state_problem(ckpt[key], shapes)
            if problem:
                return f"{key}: {problem}"
    return None


def checkpoint_problem(ckpt: dict[str, Any]) -> str | None:
    """What makes a loaded checkpoint unusable for a resume, or None: checked before anything is built."""
    return (
        _fields_problem(ckpt, _FIELDS)
        or _networks_problem(ckpt, ((Generator, "G_kwargs", ("G", "G_ema")), (Discriminator, "D_kwargs", ("D",))))
        or _training_state_problem(ckpt)
    )


def generator_problem(ckpt: dict[str, Any]) -> str | None:
    """What makes a loaded checkpoint unusable for inference, or None: G_kwargs and G_ema alone (their
    types, the planned shapes, finite values). D is not planned, and the training state not read."""
    return (
        _fields_problem(ckpt, {"G_kwargs": dict, "G_ema": dict})
        or _networks_problem(ckpt, ((Generator, "G_kwargs", ("G_ema",)),))
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_finite_tensor(value: Any, numel: int | None = None) -> bool:
    return (
        isinstance(value, torch.Tensor) and (numel is None or value.numel() == numel)
        and (not value.is_floating_point() or bool(torch.isfinite(value).all()))
    )


def _is_rng_state(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.shape == torch.get_rng_state().shape


def _controller_problem(controller: Any, what: str, p_name: str) -> str | None:
    if not isinstance(controller, dict) or not all(
        _is_finite_number(controller.get(k)) for k in ("p", "sign_sum", "sign_count")
    ):
        return f"its {what} state is not numbers"
    if not 0 <= controller["p"] <= 1:
        return f"its {p_name}={controller['p']} is outside [0, 1]"
    return None


def _training_state_problem(ckpt: dict[str, Any]) -> str | None:
    """The parts a resume restores besides the networks (Adam's moments: `check_optimizer_state`)."""
    progress = ckpt["progress"]
    if not {"cur_nimg", "cur_tick", "batch_idx"} <= progress.keys() or not all(map(_is_count, progress.values())):
        return "its progress counters are missing or not counts"
    problem = _controller_problem(ckpt["controller"], "ADA controller", "augmentation probability p")
    # APA's controller and LeCam's anchors: None (or absent, in older checkpoints) when the run had them off.
    if problem is None and ckpt.get("apa_controller") is not None:
        problem = _controller_problem(ckpt["apa_controller"], "APA controller", "APA probability p_apa")
    if problem:
        return problem
    lecam = ckpt.get("lecam")
    if lecam is not None and (
        not isinstance(lecam, dict) or not _is_finite_tensor(lecam.get("ema"), numel=2)
        or not _is_count(lecam.get("steps"))
    ):
        return "its LeCam anchors are not two finite numbers with a count of updates"
    if not _is_finite_tensor(ckpt["pl_mean"], numel=1):
        return "its path-length mean is not one finite number"
    rng = ckpt["rng"]
    cuda = rng.get("cuda")
    if (
        not _is_rng_state(rng.get("shared")) or not isinstance(rng.get("torch"), list) or not rng["torch"]
        or not all(map(_is_rng_state, rng["torch"]))
        or not (cuda is None or (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) for t in cuda)))
    ):
        return "its random number generator states are missing or malformed"
    if not isinstance(ckpt["dataset"].get("fingerprint", ""), str):
        return "its dataset fingerprint is not text"
    if not _is_count(ckpt["config"].get("freezed", 0)):
        return "its configuration's freezed is not a count"
    scalers = ckpt.get("loss_scalers", {})
    if not isinstance(scalers, dict) or not all(
        isinstance(s, dict) and all(map(_is_finite_number, s.values())) for s in scalers.values()
    ):
        return "its loss scaler states are not numbers"
    if not isinstance(ckpt.get("transfer", False), bool):
        return "its transfer flag is not true or false"
    return None


def state_problem(state: dict[str, Any], shapes: dict[str, torch.Size]) -> str | None:
    """Whether a saved state_dict holds exactly the finite float tensors of the planned network."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes), key=str)
    if missing or unexpected:
        return f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
    for name, shape in shapes.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            return f"{name} is not a float tensor"
        if tensor.shape != shape:
            return f"{name} has shape {tuple(tensor.shape)}, its arguments give {tuple(shape)}"
        if not bool(torch.isfinite(tensor).all()):
            return f"{name} holds non-finite values"
    return None


def planned_state(cls: type[torch.nn.Module], kwargs: dict[str, Any]) -> dict[str, torch.Size]:
    """The state_dict shapes of `cls(**kwargs)`, found without allocating anything.

    The network is built on PyTorch's meta device (shapes, no memory) and run once there, so
    arguments that are damaged, absurd (a 70 TB layer) or unsupported (an unknown activation,
    which only a forward pass reaches) raise ValueError here rather than during a real build.
    """
    for name, value in _int_arguments(kwargs):
        if value < 0:
            raise ValueError(f"{name}={value} is a negative dimension")
        if name == "num_layers" and value > MAX_MAPPING_LAYERS:
            raise ValueError(f"a mapping network of {value} layers, more than {MAX_MAPPING_LAYERS}")
    try:
        with torch.device("meta"):
            net = cls(**kwargs)
    except Exception as exc:  # any argument may be damaged: TypeError, ValueError, RuntimeError, ...
        raise ValueError(f"{type(exc).__name__}: {_first_sentence(exc)}") from None
    values = sum(t.numel() for t in itertools.chain(net.parameters(), net.buffers()))
    if values > MAX_NETWORK_VALUES:
        raise ValueError(f"{values:,} values, more than the {MAX_NETWORK_VALUES:,} any real network has")
    try:
        with torch.device("meta"), torch.no_grad():
            _forward_once(net)
    except Exception as exc:
        raise ValueError(f"it cannot run ({type(exc).__name__}: {_first_sentence(exc)})") from None
    return {name: tensor.shape for name, tensor in net.state_dict().items()}


def _int_arguments(kwargs: dict[str, Any]) -> list[tuple[str, int]]:
    """(name, value) of every integer argument, in nested argument dicts too."""
    found = []
    for name, value in kwargs.items():
        if isinstance(value, dict):
            found += _int_arguments(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            found.append((str(name), value))
    return found


def _forward_once(net: torch.nn.Module) -> None:
    """One image through a network on the meta device."""
    c = torch.zeros([1, net.c_dim]) if net.c_dim > 0 else None
    if isinstance(net, Generator):
        net(torch.zeros([1, net.z_dim]), c, noise_mode="const")
    else:
        net(torch.zeros([1, net.img_channels, net.img_resolution, net.img_resolution]), c)


def check_optimizer_state(path: Path, saved: dict[str, Any], opt: torch.optim.Optimizer, what: str) -> None:
    """Refuse Adam state that does not fit `opt`'s parameters: loaded as it is, it would fail (or
    train on wrong moments) steps later, far from the file that caused it."""
    problem = _optimizer_problem(saved, [group["params"] for group in opt.param_groups])
    if problem:
        raise damaged(path, f"{what}: {problem}")


def _optimizer_problem(saved: dict[str, Any], groups: list[list[torch.Tensor]]) -> str | None:
    saved_groups, state = saved.get("param_groups"), saved.get("state")
    if not isinstance(saved_groups, list) or not isinstance(state, dict) or len(saved_groups) != len(groups):
        return "not the state of this optimiser"
    by_id: dict[Any, torch.Tensor] = {}
    for saved_group, params in zip(saved_groups, groups, strict=True):
        if not isinstance(saved_group, dict) or not isinstance(saved_group.get("params"), list):
            return "not the state of this optimiser"
        if not all(_is_count(i) for i in saved_group["params"]) or len(saved_group["params"]) != len(params):
            return f"{len(saved_group['params'])} parameter ids where the network has {len(params)} parameters"
        betas = saved_group.get("betas")
        hyper = [saved_group.get(k) for k in ("lr", "eps", "weight_decay")]
        if not isinstance(betas, list | tuple) or not all(map(_is_finite_number, [*hyper, *betas])):
            return "its learning rate, betas or eps are not finite numbers"
        by_id.update(zip(saved_group["params"], params, strict=True))
    for key, entry in state.items():
        param = by_id.get(key)
        if param is None or not isinstance(entry, dict):
            return f"moments for an unknown parameter {key!r}"
        for name in ("exp_avg", "exp_avg_sq"):
            moment = entry.get(name)
            if not _is_finite_tensor(moment) or moment.shape != param.shape:
                return f"its {name} of parameter {key} is not a finite tensor of the parameter's shape"
        if not _is_finite_tensor(entry.get("step"), numel=1):
            return f"its step count of parameter {key} is not one number"
    return None


def build_generator(kwargs: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> Generator:
    G = Generator(**kwargs)
    load_state(G, state, source, "G")
    return G


def build_discriminator(kwargs: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> Discriminator:
    D = Discriminator(**kwargs)
    load_state(D, state, source, "D")
    return D


# A mismatch means the run's model settings differ from those the network was trained with.
_ARCHITECTURE_HINT = "resume with the --cfg preset (model settings) it was trained with"


def load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Strict state loading with a one-line message on any name or shape mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{source}: {what} does not match this architecture ({detail}); {_ARCHITECTURE_HINT}")
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise UserError(
                f"{source}: {what}.{name} has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)}; "
                f"{_ARCHITECTURE_HINT}"
            )
    module.load_state_dict(state)


def load_generator(spec: str, device: torch.device | str = "cpu") -> Generator:
    """G_ema from our checkpoint or from an official network pickle, ready for inference."""
    path = resolve_checkpoint_path(spec)
    if is_our_checkpoint(path):
        ckpt = load_generator_checkpoint(path)
        G = build_generator(ckpt["G_kwargs"], ckpt["G_ema"], str(path))
    else:
        from ada.official import load_official_pickle

        G = load_official_pickle(path).G_ema
    return G.eval().requires_grad_(False).to(device)

