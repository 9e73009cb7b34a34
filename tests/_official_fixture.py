"""Network pickles written in the official stylegan2-ada-pytorch structure, for the import tests.

Every module becomes a call to torch_utils.persistence._reconstruct_persistent_obj(meta)
holding the module's __dict__ as its state, init kwargs in dnnlib.util.EasyDict, gains as
numpy scalars, and a placeholder where the official format carries the module's source code.
The `official_names` fixture (tests/conftest.py) installs stand-in modules under the official
names so that pickle writes those global names; nothing needs them to read the file back.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

PLACEHOLDER_SRC = "raise RuntimeError('placeholder for the module source an official pickle carries')\n"


def install_official_names(monkeypatch) -> types.SimpleNamespace:
    """Register torch_utils.persistence and dnnlib.util stand-ins in sys.modules for this test."""

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the importer must resolve this name to its own function")

    class EasyDict(dict):
        pass

    persistence = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    EasyDict.__module__, EasyDict.__qualname__ = util.__name__, "EasyDict"
    util.EasyDict = EasyDict
    torch_utils, dnnlib = types.ModuleType("torch_utils"), types.ModuleType("dnnlib")
    torch_utils.persistence, dnnlib.util = persistence, util
    for module in (torch_utils, persistence, dnnlib, util):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)


class OfficialStylePickler(pickle.Pickler):
    """Pickles nn.Modules the way torch_utils.persistence does, from their __dict__.

    Like the official modules: all buffers are persistent (the resample filters included),
    float hyper-parameters are numpy float64, nested kwargs are EasyDicts; attributes that only
    our modules have (dtype and memory-format settings) are left out.
    """

    def __init__(self, file, protocol, names, init_kwargs=None):
        super().__init__(file, protocol=protocol)
        self.names = names
        self.init_kwargs = init_kwargs or {}

    def reducer_override(self, obj):
        if not isinstance(obj, nn.Module):
            return NotImplemented
        state = {}
        for key, value in obj.__dict__.items():
            if isinstance(value, (torch.dtype, torch.memory_format)) or key == "init_kwargs":
                continue
            state[key] = np.float64(value) if type(value) is float else value
        state["_non_persistent_buffers_set"] = set()
        kwargs = self.init_kwargs.get(id(obj), getattr(obj, "init_kwargs", {}))
        state["_init_args"] = ()
        state["_init_kwargs"] = {
            k: self.names.EasyDict(v) if isinstance(v, dict) else v for k, v in kwargs.items()
        }
        meta = dict(type="class", version=6, module_src=PLACEHOLDER_SRC, class_name=type(obj).__name__, state=state)
        return self.names.reconstruct, (meta,)


def write_official(path: Path, data, names, protocol: int = 3, init_kwargs=None) -> Path:
    buf = io.BytesIO()
    OfficialStylePickler(buf, protocol, names, init_kwargs).dump(data)
    path.write_bytes(buf.getvalue())
    return path


class AugmentPipe(nn.Module):
    """Stand-in with the official AugmentPipe's state: the p buffer and fixed filter banks."""

    def __init__(self, p: float):
        super().__init__()
        self.register_buffer("p", torch.tensor(p))
        self.register_buffer("Hz_geom", torch.randn(12))
        self.xflip = 1.0
        self.init_kwargs = dict(xflip=1, rotate90=1, xint=1)
