"""Import network pickles written by NVIDIA's stylegan2-ada-pytorch without running their code.

An official snapshot is a pickled dict {G, D, G_ema, augment_pipe, training_set_kwargs}. Each
network in it is a "persistent object" (torch_utils/persistence.py, format version 6): the
pickle stores a call `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
meta = {type: 'class', version, module_src, class_name, state}, where `module_src` is the
full Python source of the module that defined the class and `state` is the module's
`__dict__` (its _parameters, _buffers, _modules, hyper-parameters and the constructor's
_init_args / _init_kwargs). The official loader exec()s `module_src`, so loading a pickle
from the internet that way runs whatever code it carries.

Here the pickle is read by an unpickler that resolves only an allow-list of globals, each
mapped to a function of ours: tensors are rebuilt from their storage bytes through
`torch.load(weights_only=True)`, and every persistent object becomes a plain
`ModuleRecord`; `module_src` is never looked at. Our networks (`ada.networks`), which carry
the official module tree, names and constructor arguments, are then built from the
recorded constructor arguments, checked name by name and shape by shape against the
record, and filled. `load_official_pickle` is the entry point; it returns the networks and
a report of what was used and what was left out.
"""

from __future__ import annotations

import collections
import inspect
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ada.checkpoint_checks import planned_state
from ada.discriminator import Discriminator
from ada.errors import UserError, one_line
from ada.networks import Generator

PERSISTENCE_VERSION = 6

# How many names an error message lists before it says "and N more".
_LIST_LIMIT = 5


class RefusedPickle(pickle.UnpicklingError):
    """The pickle asked for something an official network pickle never contains."""


@dataclass
class ModuleRecord:
    """One persistent module of an official pickle, as data: nothing of its code is run.

    `parameters` and `buffers` are the module's own tensors (None where the module set an
    optional one to None); `modules` are its children by attribute name; `training` is its
    train/eval mode; `attributes` are the rest of its __dict__ that is not torch bookkeeping
    (hyper-parameters such as z_dim).
    """

    class_name: str
    training: bool
    init_args: tuple
    init_kwargs: dict
    parameters: dict[str, torch.Tensor | None]
    buffers: dict[str, torch.Tensor | None]
    non_persistent_buffers: set[str]
    modules: dict[str, ModuleRecord | None]
    attributes: dict[str, Any]

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Dotted name -> tensor over the whole tree, as nn.Module.state_dict() would list it."""
        out: dict[str, torch.Tensor] = {}
        for name, tensor in self.parameters.items():
            if tensor is not None:
                out[prefix + name] = tensor
        for name, tensor in self.buffers.items():
            if tensor is not None and name not in self.non_persistent_buffers:
                out[prefix + name] = tensor
        for name, child in self.modules.items():
            if child is not None:
                out.update(child.state_dict(f"{prefix}{name}."))
        return out


# ---- the allow-list: every global an official pickle needs, each mapped to a function of ours ----


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    if not isinstance(storage, torch.storage.TypedStorage):
        raise RefusedPickle(f"a tensor record holds a {type(storage).__name__} where a storage belongs")
    if backward_hooks:
        raise RefusedPickle("a tensor record carries backward hooks; network pickles have none")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, size, stride, requires_grad, collections.OrderedDict(), metadata
    )


def _rebuild_parameter(data, requires_grad, backward_hooks):
    if not isinstance(data, torch.Tensor):
        raise RefusedPickle(f"a parameter record holds a {type(data).__name__} where a tensor belongs")
    if backward_hooks:
        raise RefusedPickle("a parameter record carries backward hooks; network pickles have none")
    return nn.Parameter(data, requires_grad=requires_grad)


def _load_storage_from_bytes(data):
    # Each storage is a small torch.save file inside the pickle; torch's own restricted loader reads it.
    if not isinstance(data, bytes):
        raise RefusedPickle(f"a storage record holds a {type(data).__name__} where bytes belong")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise RefusedPickle(f"a storage record could not be read safely ({one_line(e)})") from e
    if not isinstance(storage, torch.storage.TypedStorage):
        raise RefusedPickle(f"a storage record holds a {type(storage).__name__}, not a tensor storage")
    return storage


def _latin1_bytes(text, encoding):
    # Pickle protocol 2 writes bytes objects as _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding != "latin1":
        raise RefusedPickle("_codecs.encode is allowed only to turn latin1 text into bytes")
    return text.encode("latin1")


def _numpy_dtype(spec, align=False, copy=True):
    # The official layers keep gains such as 1/np.sqrt(fan_in) as numpy scalars; their dtype comes first.
    if not isinstance(spec, str) or not isinstance(align, bool):
        raise RefusedPickle(f"numpy.dtype record {spec!r} is not a plain dtype name")
    dtype = np.dtype(spec, align, True)  # copy=True: the pickle's BUILD step must not touch numpy's shared dtype
    if dtype.kind not in "biufc":
        raise RefusedPickle(f"numpy dtype {dtype} is not a number type")
    return dtype


def _numpy_scalar(dtype, data):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise RefusedPickle("a numpy scalar record is not a plain number")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


def _persistent_record(meta) -> ModuleRecord:
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj: data, never code."""
    if not isinstance(meta, dict) or not {"type", "version", "class_name", "state"} <= meta.keys():
        raise RefusedPickle("a persistent-object record lacks its type, version, class_name or state")
    if meta["type"] != "class":
        raise RefusedPickle(f"persistent object of type {meta['type']!r}; only 'class' exists in the format")
    if meta["version"] != PERSISTENCE_VERSION:
        raise RefusedPickle(
            f"persistent object format version {meta['version']!r}; this importer reads version "
            f"{PERSISTENCE_VERSION} (stylegan2-ada-pytorch)"
        )
    state = meta["state"]
    class_name = meta["class_name"]
    if not isinstance(state, dict) or not isinstance(class_name, str):
        raise RefusedPickle("a persistent-object record has a malformed class name or state")
    parameters = _typed_dict(state.get("_parameters", {}), torch.Tensor, f"{class_name}._parameters")
    buffers = _typed_dict(state.get("_buffers", {}), torch.Tensor, f"{class_name}._buffers")
    modules = _typed_dict(state.get("_modules", {}), ModuleRecord, f"{class_name}._modules")
    non_persistent = state.get("_non_persistent_buffers_set", set())
    init_args = state.get("_init_args", ())
    init_kwargs = state.get("_init_kwargs", {})
    if not isinstance(non_persistent, set) or not isinstance(init_args, tuple) or not isinstance(init_kwargs, dict):
        raise RefusedPickle(f"the {class_name} record has malformed module bookkeeping")
    training = state.get("training", False)
    if not isinstance(training, bool):
        raise RefusedPickle(f"the {class_name} record has a malformed training flag")
    attributes = {k: v for k, v in state.items() if not k.startswith("_") and k != "training"}
    return ModuleRecord(
        class_name, training, init_args, dict(init_kwargs), parameters, buffers, set(non_persistent), modules,
        attributes,
    )


def _typed_dict(value, value_type: type, what: str) -> dict:
    if not isinstance(value, dict):
        raise RefusedPickle(f"{what} is a {type(value).__name__}, not a dict")
    for name, item in value.items():
        if not isinstance(name, str) or not (item is None or isinstance(item, value_type)):
            raise RefusedPickle(f"{what}[{name!r}] is a {type(item).__name__}, not a {value_type.__name__}")
    return dict(value)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # the name protocol 2 writes
    ("_codecs", "encode"): _latin1_bytes,
    ("dnnlib.util", "EasyDict"): dict,
    ("dnnlib", "EasyDict"): dict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
}


# pickle._Unpickler is private: CPython's pure-Python unpickler, which the pickle module keeps as its
# fallback. We build on it rather than on pickle.Unpickler (the C one) because the C unpickler's memo
# is an array that a damaged memo index (LONG_BINPUT 740835074) grows to gigabytes before anything
# fails; the pure-Python memo is a dict. tests/test_fuzz.py found it. Network pickles hold few opcodes
# (their tensors are large byte strings), so it is as fast here. tests/test_official_import.py fails
# by name if the class or the parts of it used here (find_class, persistent_load, load) change.
class OfficialUnpickler(pickle._Unpickler):
    """Resolves only ALLOWED_GLOBALS; any other global refuses the whole pickle before it is used."""

    def find_class(self, module: str, name: str) -> Any:
        target = ALLOWED_GLOBALS.get((module, name))
        if target is not None:
            return target
        if (module, name) == ("dnnlib.tflib.network", "Network"):
            raise RefusedPickle(
                "it is a TensorFlow StyleGAN2 pickle; convert it first with the official "
                "stylegan2-ada-pytorch `python legacy.py --source=IN.pkl --dest=OUT.pkl`"
            )
        raise RefusedPickle(
            f"it asks for the Python global '{module}.{name}', which an official network pickle "
            "never contains (nothing of it was run)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("it uses persistent ids, as torch.save files do; it is not a network pickle")


def looks_like_pickle(path: str | Path) -> bool:
    """True for a binary pickle (protocol 2+); False for a torch.save zip file or anything else."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_official_pickle(path: str | Path) -> Any:
    """Unpickle `path` through the allow-list; persistent networks come back as ModuleRecords."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return OfficialUnpickler(f).load()
    except FileNotFoundError as e:
        raise UserError(f"network pickle {path} does not exist") from e
    except IsADirectoryError as e:
        raise UserError(f"network pickle {path} is a directory, not a file") from e
    except RefusedPickle as e:
        raise UserError(f"refused to load {path}: {e}") from e
    except Exception as e:  # untrusted bytes fail in many ways (EOFError, ValueError, KeyError, ...)
        raise UserError(f"{path} is not a readable network pickle ({type(e).__name__}: {one_line(e)})") from e


# ---- from records to our networks ----


@dataclass
class ImportReport:
    """What was taken from the pickle and what was not, one line per fact."""

    loaded: list[str] = field(default_factory=list)
    not_loaded: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = ["loaded:"] + [f"  {s}" for s in self.loaded]
        if self.not_loaded:
            lines += ["not loaded:"] + [f"  {s}" for s in self.not_loaded]
        return "\n".join(lines)


@dataclass
class OfficialImport:
    """The networks of an official pickle, rebuilt as ours, plus what else the pickle said."""

    G: Generator
    D: Discriminator
    G_ema: Generator
    augment_p: float | None  # the adaptive augmentation strength at the time of the snapshot
    augment_kwargs: dict | None  # the official AugmentPipe's constructor arguments (transform multipliers)
    training_set_kwargs: dict | None
    report: ImportReport


_NETWORKS = {"G": Generator, "D": Discriminator, "G_ema": Generator}


def load_official_pickle(path: str | Path) -> OfficialImport:
    """Read an official stylegan2-ada-pytorch network pickle into our G, D and G_ema.

    Raises UserError, naming the problem, for a missing or unreadable file, a refused global,
    a pickle that is not an official network snapshot, constructor arguments our networks do
    not support, and any tensor name or shape that does not match.
    """
    data = read_official_pickle(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), ModuleRecord) for k in _NETWORKS):
        raise UserError(
            f"{path} is not an official stylegan2-ada-pytorch network pickle: "
            "expected a dict holding the networks G, D and G_ema"
        )
    report = ImportReport()
    nets = {}
    for key, cls in _NETWORKS.items():
        nets[key] = build_network(key, data[key], cls, report)

    augment_p = augment_kwargs = None
    pipe = data.get("augment_pipe")
    if isinstance(pipe, ModuleRecord):
        p = pipe.buffers.get("p")
        if not isinstance(p, torch.Tensor) or p.numel() != 1:
            raise UserError(f"{path}: its augment_pipe has no scalar augmentation probability p")
        augment_p = float(p)
        augment_kwargs = dict(pipe.init_kwargs)
        report.loaded.append(f"augment_pipe: p = {augment_p:.6g}, transform multipliers {augment_kwargs}")
        others = sorted(set(pipe.state_dict()) - {"p"})
        if others:
            report.not_loaded.append(f"augment_pipe buffers {others} (fixed filter banks; ours builds its own)")
    elif pipe is not None:
        raise UserError(f"{path}: augment_pipe is a {type(pipe).__name__}, not a persistent module")

    training_set_kwargs = data.get("training_set_kwargs")
    if training_set_kwargs is not None:
        report.not_loaded.append(f"training_set_kwargs {training_set_kwargs} (the dataset comes from --data)")
    extra = sorted(set(data) - {*_NETWORKS, "augment_pipe", "training_set_kwargs"}, key=str)
    if extra:
        report.not_loaded.append(f"other entries of the pickle: {extra}")
    return OfficialImport(
        nets["G"], nets["D"], nets["G_ema"], augment_p, augment_kwargs, training_set_kwargs, report
    )


def build_network(key: str, record: ModuleRecord, cls: type[nn.Module], report: ImportReport) -> nn.Module:
    """Construct `cls` from the record's constructor arguments and load the record's tensors into it."""
    if record.class_name != cls.__name__:
        raise UserError(f"official {key} is a {record.class_name}; expected a {cls.__name__}")
    try:
        bound = inspect.signature(cls).bind(*record.init_args, **record.init_kwargs)
        # Checked without allocating first: a damaged pickle may ask for a 70 TB layer.
        planned_state(cls, bound.arguments)
        net = cls(*bound.args, **bound.kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(
            f"official {key} was built with arguments our {cls.__name__} does not support "
            f"({_short(record.init_args)} {_short(record.init_kwargs)}): {e}"
        ) from e
    state, dropped = match_state(key, record.state_dict(), net)
    net.load_state_dict(state, strict=True)
    # The snapshot's train/eval mode (official snapshots are in eval mode, so that G_ema's mapping
    # does not update w_avg when it generates); requires_grad stays as constructed, for the trainer.
    net.train(record.training)
    count = sum(t.numel() for t in state.values())
    report.loaded.append(f"{key}: {len(state)} tensors, {count:,} values, into our {cls.__name__}")
    if dropped:
        report.not_loaded.append(
            f"{key}: {len(dropped)} constant buffers equal to ours, which are built in "
            f"({_some(sorted(dropped))})"
        )
    return net


def match_state(
    key: str, official: dict[str, torch.Tensor], net: nn.Module
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official tensors by our names, checked; plus the official constants dropped as built in.

    Names are the same by design. An official tensor that is a non-persistent buffer here (the
    FIR resample_filter) must hold exactly our value, else the networks would compute
    different things and the import is refused.
    """
    ours = net.state_dict()
    constants = dict(net.named_buffers())
    dropped, differing = [], []
    for name in sorted(set(official) - set(ours)):
        const = constants.get(name)
        if const is not None and official[name].shape == const.shape and torch.equal(official[name].float(), const):
            dropped.append(name)
        elif const is not None:
            differing.append(name)
    if differing:
        raise UserError(
            f"official {key} uses constants that differ from ours ({_some(differing)}), e.g. a "
            "non-standard resample filter; it cannot be imported"
        )
    unexpected = sorted(set(official) - set(ours) - set(dropped))
    missing = sorted(set(ours) - set(official))
    shapes = [
        f"{n} {list(official[n].shape)} vs ours {list(ours[n].shape)}"
        for n in sorted(set(official) & set(ours))
        if official[n].shape != ours[n].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing from the pickle: {_some(missing)}")
    if unexpected:
        problems.append(f"not in our network: {_some(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {_some(shapes)}")
    if problems:
        raise UserError(f"official {key} does not match our {type(net).__name__}: " + "; ".join(problems))
    return {n: official[n] for n in ours}, dropped




def _short(value: Any, limit: int = 300) -> str:
    """A damaged record may hold huge values: its text, cut to keep the message one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    rest = len(names) - _LIST_LIMIT
    return shown + (f" and {rest} more" if rest > 0 else "")
