"""Whether a loaded checkpoint is whole: its structure, network arguments, tensor shapes and finite values.

Checked before anything is built from it, so that a damaged or foreign file is refused with a
message naming what is wrong, never half-loaded. Network arguments are planned on the meta
device, which allocates nothing whatever the file claims.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from ada.discriminator import Discriminator
from ada.errors import one_line
from ada.networks import Generator

# The most values (parameters and buffers) a network from a file may have: about ten times the
# official 1024 px generator (30 M). More is damage, and building it could take terabytes.
MAX_NETWORK_VALUES = 2**28
# StyleGAN2 maps with 2 or 8 layers; a mapping network far deeper is damage, and slow to even plan.
MAX_MAPPING_LAYERS = 64

# What every checkpoint holds, and of which type.
FIELDS = {
    "G_kwargs": dict, "D_kwargs": dict, "G": dict, "D": dict, "G_ema": dict, "opt_G": dict, "opt_D": dict,
    "controller": dict, "pl_mean": torch.Tensor, "progress": dict, "rng": dict, "config": dict, "dataset": dict,
}


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
        _fields_problem(ckpt, FIELDS)
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
        raise ValueError(f"{type(exc).__name__}: {one_line(exc, 'sentence')}") from None
    values = sum(t.numel() for t in itertools.chain(net.parameters(), net.buffers()))
    if values > MAX_NETWORK_VALUES:
        raise ValueError(f"{values:,} values, more than the {MAX_NETWORK_VALUES:,} any real network has")
    try:
        with torch.device("meta"), torch.no_grad():
            _forward_once(net)
    except Exception as exc:
        raise ValueError(f"it cannot run ({type(exc).__name__}: {one_line(exc, 'sentence')})") from None
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


def optimizer_problem(saved: dict[str, Any], groups: list[list[torch.Tensor]]) -> str | None:
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
