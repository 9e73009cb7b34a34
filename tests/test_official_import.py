"""Importing official stylegan2-ada-pytorch network pickles without running their code.

The pickles here are written by the tests in the official structure (tests/_official_fixture.py).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch import nn

from ada import official
from ada.discriminator import Discriminator
from ada.errors import UserError
from ada.networks import Generator
from tests._official_fixture import AugmentPipe, write_official

PROTOCOLS = [2, 3, 4, 5]


# ---- the restricted unpickler and the records, on small stand-in modules ----


def test_the_private_pure_python_unpickler_we_build_on_still_works_as_we_use_it():
    """OfficialUnpickler subclasses pickle._Unpickler (why: ada/official.py). A Python release that
    drops it or stops calling its hooks must fail here, by name, not weaken the refusal of pickles."""
    assert isinstance(getattr(pickle, "_Unpickler", None), type), "pickle._Unpickler is gone"
    assert issubclass(official.OfficialUnpickler, pickle._Unpickler)

    def load(data: bytes) -> tuple[object, official.OfficialUnpickler]:
        unpickler = official.OfficialUnpickler(io.BytesIO(data))
        return unpickler.load(), unpickler

    assert load(b"\x80\x02ccollections\nOrderedDict\n)R.")[0] == collections.OrderedDict()  # find_class resolves
    with pytest.raises(official.RefusedPickle, match="'os.system'"):
        load(b"\x80\x02cos\nsystem\n.")  # ... and refuses
    with pytest.raises(official.RefusedPickle, match="persistent ids"):
        load(b"\x80\x02Pid\n.")  # persistent_load is called
    # The reason for all this: a damaged memo index costs one dict entry, not an array of that length.
    index = 740835074
    value, unpickler = load(b"\x80\x02Nr" + struct.pack("<I", index) + b".")
    assert value is None and unpickler.memo == {index: None}


class Layer(nn.Module):
    def __init__(self, n: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, n))
        self.bias = nn.Parameter(torch.randn(n)) if bias else None
        self.register_buffer("noise_const", torch.randn(n, n).half())
        self.register_buffer("scratch", torch.zeros(n), persistent=False)
        self.weight_gain = 1 / np.sqrt(n)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0 = Layer(3, bias=True)
        self.fc1 = Layer(5, bias=False)
        self.register_buffer("w_avg", torch.arange(4.0))
        self.z_dim = 7


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_records_rebuild_every_tensor_and_hyper_parameter(tmp_path, official_names, protocol):
    net = Net()
    kwargs = {id(net): dict(z_dim=7, mapping_kwargs={"num_layers": 2})}
    data = {"G": net, "training_set_kwargs": {"resolution": 8, "use_labels": False}}
    path = write_official(tmp_path / "net.pkl", data, official_names, protocol, kwargs)

    loaded = official.read_official_pickle(path)
    record = loaded["G"]
    assert isinstance(record, official.ModuleRecord)
    assert record.class_name == "Net"
    assert record.init_kwargs == {"z_dim": 7, "mapping_kwargs": {"num_layers": 2}}
    assert type(record.init_kwargs["mapping_kwargs"]) is dict  # EasyDict arrives as a plain dict
    assert record.attributes["z_dim"] == 7
    assert record.modules["fc0"].attributes["weight_gain"] == pytest.approx(1 / np.sqrt(3))
    assert "bias" not in record.modules["fc1"].parameters  # `self.bias = None` is a plain attribute
    assert record.modules["fc1"].attributes["bias"] is None
    assert loaded["training_set_kwargs"] == {"resolution": 8, "use_labels": False}

    expected = {k: v for k, v in net.state_dict().items()} | {
        "fc0.scratch": net.fc0.scratch, "fc1.scratch": net.fc1.scratch  # persistent in the pickle
    }
    got = record.state_dict()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    assert isinstance(record.modules["fc0"].parameters["weight"], nn.Parameter)


def test_refused_global_is_never_called(tmp_path, official_names):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    net = Net()
    net.payload_attribute = Payload()
    path = write_official(tmp_path / "evil.pkl", {"G": net}, official_names)
    with pytest.raises(UserError, match=rf"'{os.system.__module__}\.system'"):
        official.read_official_pickle(path)
    assert not marker.exists()

    path.write_bytes(pickle.dumps({"G": Payload()}))
    with pytest.raises(UserError, match="refused to load"):
        official.load_official_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x80\x03cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.", r"'builtins\.eval'"),
        (b"\x80\x03cdnnlib.tflib.network\nNetwork\n)\x81.", "TensorFlow StyleGAN2 pickle; convert it"),
        (b"\x80\x02X\x01\x00\x00\x00aQ.", "persistent ids"),
        (b"not a pickle at all", "not a readable network pickle"),
        (b"\x80\x04", "not a readable network pickle"),
    ],
)
def test_unreadable_or_foreign_pickles_are_refused(tmp_path, raw, message):
    path = tmp_path / "x.pkl"
    path.write_bytes(raw)
    with pytest.raises(UserError, match=message):
        official.read_official_pickle(path)


def test_storage_bytes_are_read_with_weights_only(tmp_path, official_names):
    # A storage record is itself a small torch.save file; a global smuggled into it is refused too.
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    inner = io.BytesIO()
    torch.save(Payload(), inner, _use_new_zipfile_serialization=False)

    class FakeStorage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (inner.getvalue(),)

    path = tmp_path / "storage.pkl"
    path.write_bytes(pickle.dumps({"x": FakeStorage()}))
    with pytest.raises(UserError, match="storage record could not be read safely"):
        official.read_official_pickle(path)
    assert not marker.exists()


def test_persistent_record_of_another_format_version_is_refused(tmp_path, official_names):
    class Future:
        def __reduce__(self):
            return official_names.reconstruct, (dict(type="class", version=7, class_name="G", state={}),)

    path = tmp_path / "v7.pkl"
    path.write_bytes(pickle.dumps({"G": Future()}))
    with pytest.raises(UserError, match="format version 7"):
        official.read_official_pickle(path)


def test_missing_file_and_torch_save_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        official.read_official_pickle(tmp_path / "nope.pkl")
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(2)}, ckpt)
    assert not official.looks_like_pickle(ckpt)
    with pytest.raises(UserError, match="not a readable network pickle"):
        official.read_official_pickle(ckpt)


# ---- whole snapshots: our networks written in the official structure, read back into new ones ----

G_KWARGS = dict(
    z_dim=16, w_dim=16, img_resolution=16, img_channels=3,
    mapping_kwargs={"num_layers": 2},
    synthesis_kwargs={"channel_base": 256, "channel_max": 32, "num_fp16_res": 2, "conv_clamp": 256},
)
D_KWARGS = dict(
    img_resolution=16, img_channels=3, architecture="resnet", channel_base=256, channel_max=32,
    num_fp16_res=2, conv_clamp=256, block_kwargs={}, mapping_kwargs={}, epilogue_kwargs={"mbstd_group_size": 2},
)


def make_snapshot(c_dim: int, seed: int = 0):
    torch.manual_seed(seed)
    G = Generator(c_dim=c_dim, **G_KWARGS)
    G_ema = Generator(c_dim=c_dim, **G_KWARGS)
    D = Discriminator(c_dim=c_dim, **D_KWARGS)
    for net in (G, G_ema, D):
        for buf_name, buf in net.named_buffers():
            if buf_name.endswith(("w_avg", "noise_const")):
                buf.normal_()
    G.train()  # official snapshots are all in eval mode; one in train mode shows the mode is carried over
    G_ema.eval()
    D.eval()
    return dict(training_set_kwargs={"resolution": 16}, G=G, D=D, G_ema=G_ema, augment_pipe=AugmentPipe(0.3125))


@pytest.mark.parametrize("c_dim", [0, 3])
def test_snapshot_imports_into_our_networks(tmp_path, official_names, c_dim):
    snap = make_snapshot(c_dim)
    path = write_official(tmp_path / "snap.pkl", snap, official_names)
    result = official.load_official_pickle(path)

    for key in ("G", "D", "G_ema"):
        src, dst = snap[key].state_dict(), getattr(result, key).state_dict()
        assert sorted(src) == sorted(dst)
        for name in src:
            assert torch.equal(src[name], dst[name]), f"{key}.{name}"
        assert sum(p.numel() for p in getattr(result, key).parameters()) == sum(
            p.numel() for p in snap[key].parameters()
        )
    assert result.G.training and not result.G_ema.training and not result.D.training
    assert not result.G_ema.mapping.training
    assert result.augment_p == pytest.approx(0.3125)
    assert result.augment_kwargs == {"xflip": 1, "rotate90": 1, "xint": 1}
    assert result.training_set_kwargs == {"resolution": 16}
    report = str(result.report)
    n_g = len(snap["G"].state_dict())
    assert f"G: {n_g} tensors" in report and "p = 0.3125" in report
    assert "resample_filter" in report and "Hz_geom" in report and "training_set_kwargs" in report

    torch.manual_seed(1)
    z = torch.randn(4, 16)
    c = torch.eye(c_dim)[torch.tensor([0, 1, 2, 0]) % max(c_dim, 1)] if c_dim else None
    src_G, dst_G = snap["G_ema"], result.G_ema
    for psi, noise_mode in [(1.0, "const"), (0.7, "const"), (0.5, "none")]:
        with torch.no_grad():
            expected = src_G(z, c, truncation_psi=psi, noise_mode=noise_mode)
            got = dst_G(z, c, truncation_psi=psi, noise_mode=noise_mode)
        assert torch.equal(got, expected), (psi, noise_mode)
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(result.D(img, c), snap["D"](img, c))


def test_non_standard_resample_filter_is_refused(tmp_path, official_names):
    snap = make_snapshot(0)
    snap["G"].synthesis.b8.conv0.resample_filter.fill_(1 / 16)
    path = write_official(tmp_path / "snap.pkl", snap, official_names)
    with pytest.raises(UserError, match=r"official G uses constants that differ.*b8\.conv0\.resample_filter"):
        official.load_official_pickle(path)


def test_shape_mismatch_is_refused(tmp_path, official_names):
    snap = make_snapshot(0)
    wrong = dict(G_KWARGS, c_dim=0, w_dim=24)  # the tensors were made for w_dim 16
    path = write_official(tmp_path / "snap.pkl", snap, official_names, init_kwargs={id(snap["G"]): wrong})
    message = r"official G does not match our Generator: shape mismatch: mapping\.fc0\.bias \[16\] vs ours \[24\]"
    with pytest.raises(UserError, match=message):
        official.load_official_pickle(path)


def test_missing_tensor_is_refused(tmp_path, official_names):
    snap = make_snapshot(0)
    del snap["D"].b4.out._parameters["bias"]
    path = write_official(tmp_path / "snap.pkl", snap, official_names)
    with pytest.raises(UserError, match=r"official D does not match .*missing from the pickle: b4\.out\.bias"):
        official.load_official_pickle(path)


def test_unsupported_constructor_arguments_are_refused(tmp_path, official_names):
    snap = make_snapshot(0)
    kwargs = dict(G_KWARGS, c_dim=0, synthesis_kwargs=dict(G_KWARGS["synthesis_kwargs"], architecture="resnet"))
    path = write_official(tmp_path / "snap.pkl", snap, official_names, init_kwargs={id(snap["G_ema"]): kwargs})
    with pytest.raises(UserError, match="official G_ema was built with arguments our Generator does not support"):
        official.load_official_pickle(path)


def test_pickle_without_networks_is_refused(tmp_path, official_names):
    snap = make_snapshot(0)
    del snap["D"]
    path = write_official(tmp_path / "snap.pkl", snap, official_names)
    with pytest.raises(UserError, match="not an official stylegan2-ada-pytorch network pickle"):
        official.load_official_pickle(path)
    snap = make_snapshot(0)
    snap["D"], snap["G"] = snap["G"], snap["D"]
    path = write_official(tmp_path / "swapped.pkl", snap, official_names)
    with pytest.raises(UserError, match="official G is a Discriminator; expected a Generator"):
        official.load_official_pickle(path)
