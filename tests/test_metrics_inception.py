"""The FID Inception: standard weight layouts, TF1 resizing, safe reading of TorchScript weights,
and where weights are looked for and how they are verified. Random weights only."""

import pickle
import urllib.error
import urllib.request
import zipfile

import pytest
import torch
from torch import nn

import metrics
from metrics import feature_nets
from metrics.inception import FIDInceptionV3, resize_like_tf1, state_dict_from_nvidia_names
from metrics.torchscript_tensors import read_torchscript_tensors


def conv_units_standard():
    """(name, out, in, kh, kw) of every conv unit, with pytorch-fid's (torchvision's) names."""
    units = [("Conv2d_1a_3x3", 32, 3, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 64, 32, 3, 3),
             ("Conv2d_3b_1x1", 80, 64, 1, 1), ("Conv2d_4a_3x3", 192, 80, 3, 3)]
    for name, cin, pool in [("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)]:
        units += [(f"{name}.branch1x1", 64, cin, 1, 1), (f"{name}.branch5x5_1", 48, cin, 1, 1),
                  (f"{name}.branch5x5_2", 64, 48, 5, 5), (f"{name}.branch3x3dbl_1", 64, cin, 1, 1),
                  (f"{name}.branch3x3dbl_2", 96, 64, 3, 3), (f"{name}.branch3x3dbl_3", 96, 96, 3, 3),
                  (f"{name}.branch_pool", pool, cin, 1, 1)]
    units += [("Mixed_6a.branch3x3", 384, 288, 3, 3), ("Mixed_6a.branch3x3dbl_1", 64, 288, 1, 1),
              ("Mixed_6a.branch3x3dbl_2", 96, 64, 3, 3), ("Mixed_6a.branch3x3dbl_3", 96, 96, 3, 3)]
    for name, c7 in [("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)]:
        units += [(f"{name}.branch1x1", 192, 768, 1, 1), (f"{name}.branch7x7_1", c7, 768, 1, 1),
                  (f"{name}.branch7x7_2", c7, c7, 1, 7), (f"{name}.branch7x7_3", 192, c7, 7, 1),
                  (f"{name}.branch7x7dbl_1", c7, 768, 1, 1), (f"{name}.branch7x7dbl_2", c7, c7, 7, 1),
                  (f"{name}.branch7x7dbl_3", c7, c7, 1, 7), (f"{name}.branch7x7dbl_4", c7, c7, 7, 1),
                  (f"{name}.branch7x7dbl_5", 192, c7, 1, 7), (f"{name}.branch_pool", 192, 768, 1, 1)]
    units += [("Mixed_7a.branch3x3_1", 192, 768, 1, 1), ("Mixed_7a.branch3x3_2", 320, 192, 3, 3),
              ("Mixed_7a.branch7x7x3_1", 192, 768, 1, 1), ("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7),
              ("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1), ("Mixed_7a.branch7x7x3_4", 192, 192, 3, 3)]
    for name, cin in [("Mixed_7b", 1280), ("Mixed_7c", 2048)]:
        units += [(f"{name}.branch1x1", 320, cin, 1, 1), (f"{name}.branch3x3_1", 384, cin, 1, 1),
                  (f"{name}.branch3x3_2a", 384, 384, 1, 3), (f"{name}.branch3x3_2b", 384, 384, 3, 1),
                  (f"{name}.branch3x3dbl_1", 448, cin, 1, 1), (f"{name}.branch3x3dbl_2", 384, 448, 3, 3),
                  (f"{name}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{name}.branch3x3dbl_3b", 384, 384, 3, 1),
                  (f"{name}.branch_pool", 192, cin, 1, 1)]
    return units


def standard_state_dict(seed=0):
    """A state dict in the layout of pt_inception-2015-12-05-6726825d.pth, with random values."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, out, cin, kh, kw in conv_units_standard():
        sd[f"{name}.conv.weight"] = torch.randn(out, cin, kh, kw, generator=g) * (2 / (cin * kh * kw)) ** 0.5
        sd[f"{name}.bn.weight"] = torch.ones(out)
        sd[f"{name}.bn.bias"] = torch.randn(out, generator=g) * 0.1
        sd[f"{name}.bn.running_mean"] = torch.randn(out, generator=g) * 0.1
        sd[f"{name}.bn.running_var"] = torch.rand(out, generator=g) + 0.5
    sd["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.02
    sd["fc.bias"] = torch.randn(1008, generator=g)
    return sd


@pytest.fixture(scope="module")
def random_inception():
    return metrics.inception_from_state_dict(standard_state_dict(), name="inception-random")


def test_standard_layout_is_exactly_our_parameter_set():
    ours = {k: tuple(v.shape) for k, v in FIDInceptionV3().state_dict().items()
            if not k.endswith("num_batches_tracked")}
    assert ours == {k: tuple(v.shape) for k, v in standard_state_dict().items()}
    assert len(conv_units_standard()) == 94


def test_inception_loads_standard_weights_and_returns_2048_features(random_inception):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        features = random_inception(images)
        logits = random_inception.logits(features)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert torch.isfinite(features).all() and features.std() > 0
    # IS logits are the output layer without its bias, as in the official Inception Score.
    fc = random_inception.net.fc.weight
    torch.testing.assert_close(logits, features @ fc.T)
    assert logits.shape == (2, 1008)
    # Features depend on the image, and are the same whatever the batch.
    with torch.no_grad():
        assert not torch.allclose(features[0], features[1])
        torch.testing.assert_close(random_inception(images[:1])[0], features[0], rtol=1e-4, atol=1e-5)


def test_inception_rejects_images_without_three_channels(random_inception):
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        random_inception(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_tf1_resize_samples_at_j_times_in_over_out():
    a, b, c, d = 10.0, 20.0, 40.0, 80.0
    x = torch.tensor([a, b, c, d]).repeat(4, 1)[None, None]  # constant columns
    # 4 -> 8: output j reads input j / 2, the last one clamps at the border.
    row = [a, (a + b) / 2, b, (b + c) / 2, c, (c + d) / 2, d, d]
    torch.testing.assert_close(resize_like_tf1(x, size=8), torch.tensor(row).repeat(8, 1)[None, None])
    torch.testing.assert_close(resize_like_tf1(x.transpose(2, 3), size=8),
                               torch.tensor(row).repeat(8, 1).T[None, None])
    # 4 -> 2 reads inputs 0 and 2 (no averaging, unlike half-pixel resizing).
    torch.testing.assert_close(resize_like_tf1(x, size=2), torch.tensor([a, c]).repeat(2, 1)[None, None])
    same = torch.rand(1, 3, 299, 299)
    assert torch.equal(resize_like_tf1(same), same)


def nvidia_resize(x, size=299):
    """NVIDIA's TorchScript Inception resizes with a shifted affine grid and grid_sample."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    grid = torch.nn.functional.affine_grid(theta.repeat(n, 1, 1), [n, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


@pytest.mark.parametrize("res", [16, 32, 300, 512])
def test_tf1_resize_equals_nvidias_grid_sample_resize(res):
    x = torch.randint(0, 256, (2, 3, res, res)).float()
    # Equal up to float32 rounding of grid_sample's coordinates (a few 1e-4 of a pixel).
    torch.testing.assert_close(resize_like_tf1(x), nvidia_resize(x), rtol=0, atol=0.02)


class Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def scripted_tree(tensors):
    """A TorchScript module whose attribute tree holds ``tensors`` under their dotted names."""
    root = Holder()
    for name, value in tensors.items():
        node = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, Holder())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    return torch.jit.script(root)


def test_torchscript_tensors_are_read_without_running_the_archive(tmp_path):
    tensors = {"a.weight": torch.randn(3, 4), "a.b.low": torch.randn(5).half(),
               "c.long": torch.arange(6).reshape(2, 3), "c.view": torch.randn(4, 6)[:, ::2]}
    scripted_tree(tensors).save(str(tmp_path / "m.pt"))
    read = read_torchscript_tensors(tmp_path / "m.pt")
    assert read.keys() == tensors.keys()
    for name, value in tensors.items():
        assert read[name].dtype == value.dtype
        torch.testing.assert_close(read[name], value)


def test_torchscript_reader_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match="refusing __builtin__.print"):
        read_torchscript_tensors(path)
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read it as a TorchScript archive"):
        read_torchscript_tensors(tmp_path / "text.pt")


def nvidia_layout_shapes():
    """{name: shape} of NVIDIA's inception-2015-12-05.pt, whose names follow the TF graph's scopes."""
    shapes = {}

    def unit(name, out, cin, kh, kw):
        shapes[f"layers.{name}.weight"] = (out, cin, kh, kw)
        for p in ("beta", "mean", "var"):
            shapes[f"layers.{name}.{p}"] = (out,)

    for name, out, cin, k in [("conv", 32, 3, 3), ("conv_1", 32, 32, 3), ("conv_2", 64, 32, 3),
                              ("conv_3", 80, 64, 1), ("conv_4", 192, 80, 3)]:
        unit(name, out, cin, k, k)
    for m, cin, pool in [("mixed", 192, 32), ("mixed_1", 256, 64), ("mixed_2", 288, 64)]:
        unit(f"{m}.conv", 64, cin, 1, 1)
        unit(f"{m}.tower.conv", 48, cin, 1, 1)
        unit(f"{m}.tower.conv_1", 64, 48, 5, 5)
        unit(f"{m}.tower_1.conv", 64, cin, 1, 1)
        unit(f"{m}.tower_1.conv_1", 96, 64, 3, 3)
        unit(f"{m}.tower_1.conv_2", 96, 96, 3, 3)
        unit(f"{m}.tower_2.conv", pool, cin, 1, 1)
    unit("mixed_3.conv", 384, 288, 3, 3)
    unit("mixed_3.tower.conv", 64, 288, 1, 1)
    unit("mixed_3.tower.conv_1", 96, 64, 3, 3)
    unit("mixed_3.tower.conv_2", 96, 96, 3, 3)
    for m, c7 in [("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160), ("mixed_7", 192)]:
        unit(f"{m}.conv", 192, 768, 1, 1)
        unit(f"{m}.tower.conv", c7, 768, 1, 1)
        unit(f"{m}.tower.conv_1", c7, c7, 1, 7)
        unit(f"{m}.tower.conv_2", 192, c7, 7, 1)
        unit(f"{m}.tower_1.conv", c7, 768, 1, 1)
        for i, (out, kh, kw) in enumerate([(c7, 7, 1), (c7, 1, 7), (c7, 7, 1), (192, 1, 7)], start=1):
            unit(f"{m}.tower_1.conv_{i}", out, c7, kh, kw)
        unit(f"{m}.tower_2.conv", 192, 768, 1, 1)
    unit("mixed_8.tower.conv", 192, 768, 1, 1)
    unit("mixed_8.tower.conv_1", 320, 192, 3, 3)
    unit("mixed_8.tower_1.conv", 192, 768, 1, 1)
    unit("mixed_8.tower_1.conv_1", 192, 192, 1, 7)
    unit("mixed_8.tower_1.conv_2", 192, 192, 7, 1)
    unit("mixed_8.tower_1.conv_3", 192, 192, 3, 3)
    for m, cin in [("mixed_9", 1280), ("mixed_10", 2048)]:
        unit(f"{m}.conv", 320, cin, 1, 1)
        unit(f"{m}.tower_conv", 384, cin, 1, 1)
        unit(f"{m}.tower_mixed_conv", 384, 384, 1, 3)
        unit(f"{m}.tower_mixed_conv_1", 384, 384, 3, 1)
        unit(f"{m}.tower_1_conv", 448, cin, 1, 1)
        unit(f"{m}.tower_1_conv_1", 384, 448, 3, 3)
        unit(f"{m}.tower_1_mixed_conv", 384, 384, 1, 3)
        unit(f"{m}.tower_1_mixed_conv_1", 384, 384, 3, 1)
        unit(f"{m}.tower_2_conv", 192, cin, 1, 1)
    shapes["output.weight"] = (1008, 2048)
    shapes["output.bias"] = (1008,)
    return shapes


def nvidia_layout_tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in nvidia_layout_shapes().items():
        value = torch.randn(shape, generator=g) * 0.05
        out[name] = value.abs() + 0.5 if name.endswith(".var") else value
    return out


def test_nvidia_names_map_onto_the_standard_layout():
    nv = nvidia_layout_tensors()
    sd = state_dict_from_nvidia_names(nv)
    FIDInceptionV3().load_state_dict(sd)  # strict: every key present, every shape right
    assert torch.equal(sd["Mixed_7b.branch3x3_2a.conv.weight"], nv["layers.mixed_9.tower_mixed_conv.weight"])
    assert torch.equal(sd["Mixed_6b.branch7x7_2.conv.weight"], nv["layers.mixed_4.tower.conv_1.weight"])
    assert torch.equal(sd["Mixed_7c.branch_pool.bn.running_var"], nv["layers.mixed_10.tower_2_conv.var"])
    assert torch.equal(sd["Conv2d_1a_3x3.bn.bias"], nv["layers.conv.beta"])
    assert torch.equal(sd["fc.weight"], nv["output.weight"])
    assert torch.equal(sd["Mixed_5b.branch5x5_1.bn.weight"], torch.ones(48))
    with pytest.raises(ValueError, match="unexpected tensor 'layers.extra.weight'"):
        state_dict_from_nvidia_names({**nv, "layers.extra.weight": torch.zeros(1)})


@pytest.fixture
def no_weights_env(monkeypatch, tmp_path):
    monkeypatch.delenv(feature_nets.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(feature_nets.CACHE_ENV, str(tmp_path / "cache"))


def register_as_known(monkeypatch, path, layout):
    """Make a random-weight file pass verification, as the real file would."""
    known = feature_nets.WeightsFile(path.name, feature_nets.sha256_of(path), "https://example.invalid",
                                     layout)
    monkeypatch.setattr(feature_nets, "KNOWN_INCEPTION_FILES", (known,))


def assert_holds(net, state_dict):
    loaded = net.net.state_dict()
    for name, value in state_dict.items():
        assert torch.equal(loaded[name], value), name


def test_weights_are_found_in_the_cache_dir_and_from_the_environment(no_weights_env, monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / "pt_inception-2015-12-05-6726825d.pth"
    sd = standard_state_dict(seed=2)
    torch.save(sd, path)
    register_as_known(monkeypatch, path, "state_dict")
    assert_holds(metrics.load_feature_net(), sd)
    other = tmp_path / "elsewhere.pth"
    path.rename(other)
    monkeypatch.setenv(feature_nets.WEIGHTS_ENV, str(other))
    net = metrics.load_feature_net()
    assert_holds(net, sd)
    assert net.name == metrics.INCEPTION_NAME and net.has_logits and not net.training


def test_nvidia_torchscript_file_loads_without_running_it(no_weights_env, monkeypatch, tmp_path):
    nv = nvidia_layout_tensors(seed=1)
    path = tmp_path / "inception-2015-12-05.pt"
    scripted_tree(nv).save(str(path))
    register_as_known(monkeypatch, path, "nvidia_torchscript")
    # Running the archive's code would be the only way to reach this; the reader never does.
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    assert_holds(metrics.load_inception(path), state_dict_from_nvidia_names(nv))


def test_an_nvidia_file_of_another_layout_is_refused_in_one_line(no_weights_env, monkeypatch, tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    scripted_tree({"layers.conv.weight": torch.zeros(32, 3, 3, 3), "layers.other.gamma": torch.ones(3)}).save(
        str(path))
    register_as_known(monkeypatch, path, "nvidia_torchscript")
    with pytest.raises(metrics.FeatureNetUnavailable, match="cannot map .*layers.other.gamma.*pt_inception"):
        metrics.load_inception(path)


def test_missing_weights_say_where_to_get_them(no_weights_env, tmp_path):
    with pytest.raises(metrics.FeatureNetUnavailable) as err:
        metrics.load_feature_net()
    message = str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert feature_nets.PYTORCH_FID_WEIGHTS.url in message
    assert str(tmp_path / "cache") in message and "ADA_INCEPTION_WEIGHTS" in message and "\n" not in message
    with pytest.raises(metrics.FeatureNetUnavailable, match="does not exist"):
        metrics.load_feature_net(inception_weights=tmp_path / "nope.pth")


def test_a_weights_variable_pointing_nowhere_is_named(no_weights_env, monkeypatch, tmp_path):
    monkeypatch.setenv(feature_nets.WEIGHTS_ENV, str(tmp_path / "moved.pth"))
    message = r"\$ADA_INCEPTION_WEIGHTS: .*moved.pth does not exist"
    with pytest.raises(metrics.FeatureNetUnavailable, match=message):
        metrics.load_feature_net(allow_download=True)  # an explicit choice is never replaced by a download


def test_weights_with_the_wrong_hash_are_refused(no_weights_env, tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(2)}, path)
    with pytest.raises(metrics.FeatureNetUnavailable, match=r"SHA-256 .* expected 6726825d\.\.\. .*download"):
        metrics.load_inception(path)


def test_download_without_network_explains_itself(no_weights_env, monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(metrics.FeatureNetUnavailable, match="cannot download .*pt_inception.*no route"):
        metrics.load_inception(allow_download=True)
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left behind
