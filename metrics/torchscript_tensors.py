"""Read the tensors of a TorchScript archive without loading or running its program.

``torch.jit.load`` compiles and runs the archive's code, and ``torch.load(weights_only=True)``
refuses TorchScript archives. A TorchScript file is a zip whose ``data.pkl`` pickles the module tree:
each module is a ``__torch__.*`` class built from a dict of attributes, each tensor a call to
``torch._utils._rebuild_tensor_v2`` over a storage kept as raw bytes in ``data/<key>``. This unpickler
accepts exactly those globals, replaces every one of them with a harmless local stand-in, and
refuses anything else, so a hostile file can at worst fail to load.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import torch

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stand-in for a pickled ``__torch__`` object: keeps its attribute state and nothing else."""

    def __setstate__(self, state: object) -> None:
        self.state = state


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_ignored: object
) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


def _first_argument(value: object, *_ignored) -> object:
    return value


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _first_argument
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return _first_argument
        raise pickle.UnpicklingError(f"refusing {module}.{name}: not part of a TorchScript weight file")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected storage type {dtype!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
            if flat.numel() != numel:
                raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} values, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def _flatten(obj: object, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.state if isinstance(obj, _ScriptObject) else obj
    if not isinstance(state, dict):
        return
    for key, value in state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + key] = value
        elif isinstance(value, (_ScriptObject, dict)):
            _flatten(value, prefix + key + ".", out)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """{dotted attribute name: tensor} for every tensor attribute of the archive's module tree.

    Raises ValueError when the file is not a TorchScript archive this reader understands.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pkl = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise ValueError(f"{path}: not a TorchScript archive (no top-level data.pkl)")
            prefix = pkl[0][: -len("data.pkl")]
            byteorder = f"{prefix}byteorder"
            if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
                raise ValueError(f"{path}: big-endian TorchScript archives are not supported")
            root = _TensorsOnlyUnpickler(archive.read(pkl[0]), archive, prefix).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot read it as a TorchScript archive ({err})") from None
    tensors: dict[str, torch.Tensor] = {}
    _flatten(root, "", tensors)
    return tensors
