"""evaluate() end to end with tiny generators, tiny TorchScript feature networks and random data."""

import json

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from torch import nn

import metrics
from metrics import formulas
from metrics.data import label_sampler
from metrics.features import gather_rows, quantize, real_features, shard_indices, to_rgb
from metrics.ppl import ppl_images, slerp


class TinyMapping(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws):
        super().__init__()
        self.fc = nn.Linear(z_dim + c_dim, w_dim)
        self.num_ws = num_ws

    def forward(self, z, c, truncation_psi=1.0):
        return self.fc(torch.cat([z, c.to(z.dtype)], dim=1)).unsqueeze(1).repeat(1, self.num_ws, 1)


class TinySynthesis(nn.Module):
    def __init__(self, w_dim, num_ws, res, channels):
        super().__init__()
        self.shape = (channels, res, res)
        self.fc = nn.Linear(w_dim * num_ws, channels * res * res)
        self.register_buffer("noise_const", torch.randn(res, res))

    def forward(self, ws, noise_mode="random", force_fp32=False):
        x = self.fc(ws.flatten(1)).reshape(-1, *self.shape)
        noise = torch.randn_like(x[:, :1]) if noise_mode == "random" else self.noise_const
        return torch.tanh(x + 0.1 * noise)


class TinyG(nn.Module):
    """The official G interface in miniature."""

    def __init__(self, res=16, channels=3, c_dim=0, z_dim=8, w_dim=8, num_ws=2):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.img_resolution, self.img_channels = res, channels
        self.mapping = TinyMapping(z_dim, c_dim, w_dim, num_ws)
        self.synthesis = TinySynthesis(w_dim, num_ws, res, channels)

    def forward(self, z, c, truncation_psi=1.0, noise_mode="random"):
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode=noise_mode)


class ReplayG(TinyG):
    """A 'generator' that returns the real images in order: its features equal the reals' exactly."""

    def __init__(self, images_uint8):
        super().__init__(res=images_uint8.shape[-1], channels=images_uint8.shape[1])
        self.register_buffer("images", (images_uint8.float() - 127.5) / 127.5)
        self.pos = 0

    def forward(self, z, c, truncation_psi=1.0, noise_mode="random"):
        out = self.images[self.pos:self.pos + z.shape[0]]
        self.pos += z.shape[0]
        return out


class TinyFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1
        x = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(x)).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def features_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nets") / "tiny-features.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    return path


@pytest.fixture(scope="module")
def net(features_path):
    return metrics.load_feature_net(features_path)


def random_images(n, channels=3, res=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, res, res), dtype=torch.uint8, generator=g)


def reals_of(n, channels=3, res=16, seed=0, name="random-reals"):
    return metrics.TensorImages(random_images(n, channels, res, seed), name=name)


def test_features_network_end_to_end(features_path, tmp_path):
    net = metrics.load_feature_net(features_path)  # what `ada metrics --features PATH` does
    torch.manual_seed(1)
    G, reals = TinyG(), reals_of(120)
    results = metrics.evaluate("fid200_full,kid100,pr100_3,fid100", G, reals, feature_net=net,
                               batch_size=32, cache_dir=tmp_path, progress=True)
    assert [r.metric for r in results] == ["fid200_full", "kid100", "pr100_3", "fid100"]
    values = {k: v for r in results for k, v in r.results.items()}
    assert set(values) == {"fid200_full", "kid100", "pr100_3_precision", "pr100_3_recall", "fid100"}
    assert all(np.isfinite(v) for v in values.values())
    assert values["fid200_full"] > 0 and values["kid100"] > 0
    assert 0 <= values["pr100_3_precision"] <= 1 and 0 <= values["pr100_3_recall"] <= 1
    assert len(list((tmp_path / "metrics").glob("*.npz"))) == 2  # reals: all 120 with rows, 100 with rows
    # The same seed gives the same numbers, and the cached statistics give the same numbers too.
    again = metrics.evaluate("fid200_full,kid100", G, reals, feature_net=net, batch_size=32,
                             cache_dir=tmp_path)
    assert again[0].results == results[0].results and again[1].results == results[1].results
    record = results[0].record(snapshot_pkl="network-snapshot-000010.pkl", kimg=10)
    line = json.loads(json.dumps(record))
    assert line["metric"] == "fid200_full" and line["results"] == {"fid200_full": values["fid200_full"]}
    assert line["num_gpus"] == 1 and line["feature_net"] == net.name and line["kimg"] == 10
    assert line["snapshot_pkl"] == "network-snapshot-000010.pkl" and line["total_time"] >= 0
    assert {"total_time_str", "timestamp"} <= line.keys()


@pytest.mark.parametrize("channels", [3, 1])
def test_a_generator_that_replays_the_reals_scores_zero_fid_and_perfect_pr(net, channels):
    reals = reals_of(100, channels=channels)
    G = ReplayG(reals.images)
    results = metrics.evaluate(["fid100_full", "pr100_3"], G, reals, feature_net=net, batch_size=32)
    assert abs(results[0].results["fid100_full"]) < 1e-6
    assert results[1].results == {"pr100_3_precision": 1.0, "pr100_3_recall": 1.0}


def test_real_features_equal_direct_extraction_and_are_cached(net, tmp_path):
    reals = reals_of(70, channels=1)
    stats = real_features(reals, net, max_items=50, capture_all=True, device=torch.device("cpu"),
                          batch_size=16, cache_dir=tmp_path)
    with torch.no_grad():
        direct = net(to_rgb(reals.images[:50]))
    np.testing.assert_allclose(stats.all(), direct.numpy(), rtol=1e-5, atol=1e-6)

    class Broken(metrics.FeatureNet):
        name = net.name

        def forward(self, images):
            raise AssertionError("should have come from the cache")

    cached = real_features(reals, Broken(), max_items=50, capture_all=True, device=torch.device("cpu"),
                           cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.all(), stats.all())
    with pytest.raises(AssertionError, match="cache"):  # another count is another cache entry
        real_features(reals, Broken(), max_items=60, capture_all=True, device=torch.device("cpu"),
                      cache_dir=tmp_path)


class TinyLogitsNet(metrics.FeatureNet):
    """A feature network with class logits, like Inception, small enough for a test."""

    has_logits = True
    name = "tiny-logits"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.head = nn.Linear(12, 5)

    def forward(self, images):
        return self.inner(images)

    def logits(self, features):
        return self.head(features) * 4


def test_inception_score_end_to_end(net):
    reals = reals_of(40)
    torch.manual_seed(2)
    logits_net = TinyLogitsNet(net)
    (result,) = metrics.evaluate("is40", ReplayG(reals.images), None, feature_net=logits_net, batch_size=16)
    with torch.no_grad():
        expected = formulas.inception_score(logits_net.logits(net(reals.images)).numpy(), num_splits=10)
    assert result.results["is40_mean"] == pytest.approx(expected[0], rel=1e-5)
    assert result.results["is40_std"] == pytest.approx(expected[1], rel=1e-4, abs=1e-6)
    assert result.results["is40_mean"] > 1


class RepeatMapping(nn.Module):
    def __init__(self, num_ws):
        super().__init__()
        self.num_ws = num_ws

    def forward(self, z, c, truncation_psi=1.0):
        return z.unsqueeze(1).repeat(1, self.num_ws, 1)


class LinearSynthesis(nn.Module):
    def __init__(self, q, res):
        super().__init__()
        self.res = res
        self.register_buffer("q", q)
        # Small, so that float32 rounding of image + noise stays far below the eps-sized steps.
        self.register_buffer("noise_const", torch.randn(res, res) * 1e-3)

    def forward(self, ws, noise_mode="random", force_fp32=False):
        assert noise_mode == "const"
        return (ws.flatten(1) @ self.q.T).reshape(-1, 1, self.res, self.res) + self.noise_const


class LinearG(TinyG):
    """w = z on every layer; image = s * Q ws + noise, Q with orthonormal columns, so a W-space step
    d changes the image by exactly s * |d| (noise is shared by both images of a pair)."""

    def __init__(self, scale, res=8, z_dim=8, num_ws=2):
        super().__init__(res=res, channels=1, z_dim=z_dim, w_dim=z_dim, num_ws=num_ws)
        g = torch.Generator().manual_seed(3)
        q, _ = torch.linalg.qr(torch.randn(res * res, z_dim * num_ws, generator=g))
        self.mapping = RepeatMapping(num_ws)
        self.synthesis = LinearSynthesis(q * scale, res)


def squared_l2(a, b):
    return (a - b).square().flatten(1).sum(1)


def test_ppl_of_a_linear_generator_matches_theory():
    scale = 0.01
    G = LinearG(scale)
    noise_before = G.synthesis.noise_const.clone()
    (result,) = metrics.evaluate("ppl2_wend_2k", G, None, ppl_distance=squared_l2, batch_size=64)
    # One sample: 3 channels (gray repeated) * (255/2 * s)^2 * |w1 - w0|^2 over both layers
    # = 3 * (127.5 s)^2 * 2 * |z1 - z0|^2, and |z1 - z0|^2 is 2 * chi-square with z_dim dof.
    c = 3 * (127.5 * scale) ** 2 * 4
    lo, hi = scipy.stats.chi2.ppf([0.01, 0.99], 8)
    truncated = scipy.integrate.quad(lambda x: x * scipy.stats.chi2.pdf(x, 8), lo, hi)[0] / 0.98
    assert result.results["ppl2_wend_2k"] == pytest.approx(c * truncated, rel=0.05)
    assert torch.equal(G.synthesis.noise_const, noise_before)  # the caller's G is untouched


def test_ppl_in_z_space_follows_the_great_circle():
    scale = 0.1
    (result,) = metrics.evaluate("ppl2_zend_2k", LinearG(scale), None, ppl_distance=squared_l2, batch_size=64)
    # At t = 0 slerp moves the unit vector z0/|z0| towards z1/|z1| at speed theta, the angle between
    # them; so one sample is 3 channels * (127.5 s)^2 * 2 layers * theta^2.
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, 200_000, 8))
    cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    expected = formulas.filtered_mean(3 * (127.5 * scale) ** 2 * 2 * np.arccos(cos) ** 2)
    assert result.results["ppl2_zend_2k"] == pytest.approx(expected, rel=0.05)


def test_ppl_images_crop_downsample_and_scale():
    images = torch.linspace(-1, 1, 2 * 512 * 512).reshape(2, 1, 512, 512)
    out = ppl_images(images, crop=False, resolution=512)
    assert out.shape == (2, 3, 256, 256)
    torch.testing.assert_close(out[:, :1], (images.reshape(2, 1, 256, 2, 256, 2).mean((3, 5)) + 1) * 127.5)
    cropped = ppl_images(images, crop=True, resolution=512)
    assert cropped.shape == (2, 3, 128, 128)  # rows 3/8..7/8, columns 2/8..6/8, then halved
    torch.testing.assert_close(cropped[0, 0, 0, 0], (images[0, 0, 192:194, 128:130].mean() + 1) * 127.5)
    small = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(ppl_images(small, crop=False, resolution=16), (small + 1) * 127.5)


def test_slerp_moves_along_the_great_circle():
    a, b = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)  # noqa: E731
    torch.testing.assert_close(slerp(a, b, torch.zeros(5, 1, dtype=torch.float64)), unit(a))
    torch.testing.assert_close(slerp(a, b, torch.ones(5, 1, dtype=torch.float64)), unit(b))
    half = slerp(a, b, torch.full((5, 1), 0.5, dtype=torch.float64))
    torch.testing.assert_close(half, unit(unit(a) + unit(b)))


def test_conditional_generators_draw_labels_from_the_data(net):
    labels = torch.eye(3)[torch.tensor([0, 0, 0, 2])]
    reals = metrics.TensorImages(random_images(4), labels=labels)
    G = TinyG(c_dim=3)
    draws = label_sampler(G, reals, torch.Generator().manual_seed(0))(400)
    assert draws.shape == (400, 3)
    counts = draws.sum(0)
    assert counts[1] == 0 and 250 < counts[0] < 350 and 50 < counts[2] < 150
    results = metrics.evaluate("fid50", G, reals, feature_net=net, batch_size=16)
    assert np.isfinite(results[0].results["fid50"])


def test_sharding_and_gathering_at_one_process():
    assert shard_indices(10, 0, 1) == list(range(10))
    shards = [shard_indices(10, r, 3) for r in range(3)]
    assert all(len(s) == 4 for s in shards)  # wrapped to equal length
    interleaved = [shards[r][i] for i in range(4) for r in range(3)][:10]
    assert interleaved == list(range(10))
    x = torch.randn(4, 3)
    assert gather_rows(x, 1) is x
    with pytest.raises(ValueError, match="torch.distributed"):
        gather_rows(x, 2)


def test_quantize_rounds_like_the_official_metrics():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.5 / 127.5, 1.0, 2.0])
    assert quantize(x).tolist() == [0, 0, 128, 128, 255, 255]
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(quantize((u.float() - 127.5) / 127.5), u)


def test_format_time():
    assert [metrics.format_time(s) for s in (5, 65, 3 * 3600 + 62, 2 * 86400 + 3700)] == [
        "5s", "1m 05s", "3h 01m 02s", "2d 01h 01m"]


# --- bad input: one clear line each -------------------------------------------------------------

def one_line_error(exc_type, fn, *args, **kwargs):
    with pytest.raises(exc_type) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_checkpoint_resolution_not_matching_the_data(net):
    message = one_line_error(ValueError, metrics.evaluate, "fid10", TinyG(res=16), reals_of(20, res=32),
                             feature_net=net)
    assert "3x16x16" in message and "3x32x32" in message and "resolution" in message
    message = one_line_error(ValueError, metrics.evaluate, "fid10", TinyG(channels=3),
                             reals_of(20, channels=1), feature_net=net)
    assert "1x16x16" in message


def test_empty_or_missing_dataset(net):
    empty = metrics.TensorImages(torch.zeros(0, 3, 16, 16, dtype=torch.uint8), name="empty-set")
    assert "'empty-set' is empty" in one_line_error(ValueError, metrics.evaluate, "fid10", TinyG(), empty,
                                                    feature_net=net)
    assert "no dataset" in one_line_error(ValueError, metrics.evaluate, "kid10", TinyG(), None,
                                          feature_net=net)
    assert "labels are none" in one_line_error(ValueError, metrics.evaluate, "is10", TinyG(c_dim=2),
                                               reals_of(4), feature_net=TinyLogitsNet(net))


def test_unavailable_networks_are_reported_before_any_work(net, tmp_path):
    assert "needs a feature network" in one_line_error(
        metrics.FeatureNetUnavailable, metrics.evaluate, "fid10", TinyG(), reals_of(4))
    assert "class logits" in one_line_error(
        metrics.FeatureNetUnavailable, metrics.evaluate, "fid10,is10", TinyG(), reals_of(4), feature_net=net)
    assert "ADA_PPL_NET" in one_line_error(
        metrics.FeatureNetUnavailable, metrics.evaluate, "ppl2_wend", TinyG(), reals_of(4))
    assert "does not exist" in one_line_error(
        metrics.FeatureNetUnavailable, metrics.load_feature_net, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "not a TorchScript module" in one_line_error(
        metrics.FeatureNetUnavailable, metrics.load_feature_net, tmp_path / "junk.pt")


def test_a_features_network_with_the_wrong_output_shape_is_named(tmp_path):
    class Spatial(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return images.float()

    path = tmp_path / "spatial.pt"
    torch.jit.script(Spatial()).save(str(path))
    message = one_line_error(metrics.FeatureNetUnavailable, metrics.evaluate, "fid10", TinyG(), reals_of(10),
                             feature_net=metrics.load_feature_net(path))
    assert "spatial" in message and "[N, D]" in message


def test_lpips_style_distance_on_feature_maps():
    class TwoMaps(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x[:, :, ::2, ::2] * 3

    distance = metrics.lpips_style_distance(torch.jit.script(TwoMaps()))
    a = torch.rand(4, 3, 8, 8) * 255
    assert torch.equal(distance(a, a), torch.zeros(4))
    # Unit-normalised over channels, so scaling an image changes nothing; flipping the channel order does.
    torch.testing.assert_close(distance(a, a * 2), torch.zeros(4), atol=1e-6, rtol=0)
    b = a.flip(1)

    def term(fa, fb):
        unit = lambda f: f / f.norm(dim=1, keepdim=True)  # noqa: E731
        return (unit(fa) - unit(fb)).square().sum(1).mean((1, 2))

    expected = term(a, b) + term(a[:, :, ::2, ::2], b[:, :, ::2, ::2])
    torch.testing.assert_close(distance(a, b), expected, rtol=1e-5, atol=1e-6)


def test_official_lpips_networks_are_called_the_official_way():
    class Official(nn.Module):
        def forward(self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False):
            assert return_lpips and not resize_images
            return img.flatten(1) / 100

    distance = metrics.lpips_style_distance(torch.jit.script(Official()))
    a, b = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    torch.testing.assert_close(distance(a, b), torch.full((2,), 48 / 1e4))


def _two_rank_worker(rank, tmp, features_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        net = metrics.load_feature_net(features_path)
        reals = reals_of(37)  # odd, so the shards wrap around
        stats = real_features(reals, net, max_items=None, capture_all=True, device=torch.device("cpu"),
                              batch_size=8, rank=rank, world_size=2)
        np.save(f"{tmp}/real{rank}.npy", stats.all())
        torch.manual_seed(0)
        results = metrics.evaluate("fid30_full,kid20", TinyG(), reals, feature_net=net, batch_size=8,
                                   rank=rank, world_size=2)
        (tmp / f"results{rank}.json").write_text(json.dumps([r.results for r in results]))
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_shard_and_gather_like_one(tmp_path, features_path, net):
    torch.multiprocessing.spawn(_two_rank_worker, args=(tmp_path, features_path), nprocs=2)
    single = real_features(reals_of(37), net, max_items=None, capture_all=True, device=torch.device("cpu"))
    for rank in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"real{rank}.npy"), single.all(), rtol=1e-5, atol=1e-6)
    rank0, rank1 = (json.loads((tmp_path / f"results{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1 and np.isfinite(rank0[0]["fid30_full"])


class ColumnMeans(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2))


def test_legacy_metrics_keep_the_training_xflips_and_full_ones_drop_them(tmp_path):
    path = tmp_path / "columns.pt"
    torch.jit.script(ColumnMeans()).save(str(path))
    net = metrics.load_feature_net(path)  # sees left from right
    ramp = torch.linspace(0, 128, 16, dtype=torch.float64).round().to(torch.uint8)
    reals = metrics.TensorImages(random_images(50) // 2 + ramp, name="ramps")  # dark left, bright right
    mirrored = torch.cat([reals.images, reals.images.flip(-1)])
    # The legacy fid100 of x-flipped data compares against the 50 reals and their 50 mirror images.
    (legacy,) = metrics.evaluate("fid100", ReplayG(mirrored), reals, feature_net=net, batch_size=25, xflip=True)
    assert abs(legacy.results["fid100"]) < 1e-6
    (unflipped,) = metrics.evaluate("fid100", ReplayG(mirrored), reals, feature_net=net, batch_size=25)
    assert unflipped.results["fid100"] > 1
    # fid{N}_full drops the flips, as the official primary metrics do: xflip changes nothing.
    full = [metrics.evaluate("fid100_full", ReplayG(mirrored), reals, feature_net=net, batch_size=25, xflip=x)[0]
            for x in (True, False)]
    assert full[0].results == full[1].results
    assert metrics.parse_metric_name("pr50k3").keeps_xflips and metrics.parse_metric_name("kid50k").keeps_xflips
    assert not any(metrics.parse_metric_name(n).keeps_xflips for n in ("fid50k_full", "pr50k3_full", "is50k"))


def test_ppl_runs_the_generator_in_float32():
    from ada.networks import SynthesisLayer
    from tests._tiny import tiny_generator

    G = tiny_generator(res=16, num_fp16_res=2)
    G.synthesis.reduced_dtype = torch.bfloat16  # reduced precision that a CPU runs (float16 is CUDA-only)
    seen = []
    for layer in G.synthesis.modules():
        if isinstance(layer, SynthesisLayer):
            layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    G.synthesis(G.mapping(torch.randn(2, 8), None))
    assert torch.bfloat16 in seen  # the top blocks do run in reduced precision outside PPL
    seen.clear()
    metrics.evaluate("ppl2_wend_4", G, None, ppl_distance=squared_l2, batch_size=2)
    assert seen and set(seen) == {torch.float32}
