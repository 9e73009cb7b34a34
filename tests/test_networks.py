"""Generator and discriminator: shapes, truncation, the w_avg tracker, noise modes, Freeze-D's layer order."""

from __future__ import annotations

import pytest
import torch

from ada.discriminator import Discriminator
from ada.networks import Generator

SMALL = dict(channel_base=128, channel_max=16)  # 16 channels at 4 and 8 px, 8 at 16, 4 at 32


def small_G(res: int, channels: int = 3, c_dim: int = 0, **mapping) -> Generator:
    return Generator(
        z_dim=8, c_dim=c_dim, w_dim=8, img_resolution=res, img_channels=channels,
        mapping_kwargs=dict(num_layers=2, **mapping), synthesis_kwargs=SMALL,
    )


def small_D(res: int, channels: int = 3, c_dim: int = 0, architecture: str = "resnet") -> Discriminator:
    return Discriminator(
        c_dim=c_dim, img_resolution=res, img_channels=channels, architecture=architecture, **SMALL,
        epilogue_kwargs=dict(mbstd_group_size=2),
    )


def one_hot(n: int, c_dim: int) -> torch.Tensor | None:
    return torch.eye(c_dim)[torch.arange(n) % c_dim] if c_dim else None


# Every resolution with each channel count and with and without labels, not the full cross product.
SHAPE_CASES = [(4, 1, 0), (4, 3, 3), (8, 3, 0), (8, 1, 3), (16, 1, 0), (16, 3, 3), (32, 3, 0), (32, 1, 3)]


@pytest.mark.parametrize("res, channels, c_dim", SHAPE_CASES)
def test_generator_output_shape(res, channels, c_dim):
    torch.manual_seed(0)
    G = small_G(res, channels, c_dim)
    # One w per conv layer plus the last toRGB: 2 at 4 px, and 2 more per doubling.
    assert G.num_ws == 2 * (res.bit_length() - 2)
    z = torch.randn(4, 8)
    img = G(z, one_hot(4, c_dim))
    assert img.shape == (4, channels, res, res) and img.dtype == torch.float32
    assert bool(torch.isfinite(img).all())
    assert not torch.equal(img[0], img[1])  # different latents, different images
    if c_dim:
        # The label reaches the image.
        assert not torch.equal(G(z[:1], one_hot(1, c_dim), noise_mode="const"),
                               G(z[:1], torch.eye(c_dim)[1:2], noise_mode="const"))


@pytest.mark.parametrize("res, channels, c_dim", SHAPE_CASES)
@pytest.mark.parametrize("architecture", ["orig", "skip", "resnet"])
def test_discriminator_output_shape(res, channels, c_dim, architecture):
    torch.manual_seed(0)
    D = small_D(res, channels, c_dim, architecture)
    img = torch.randn(4, channels, res, res)
    logits = D(img, one_hot(4, c_dim))
    assert logits.shape == (4, 1) and bool(torch.isfinite(logits).all())
    assert not torch.equal(logits[0], logits[1])
    # The logits depend on the image: a gradient reaches every pixel.
    img.requires_grad_(True)
    (grad,) = torch.autograd.grad(D(img, one_hot(4, c_dim)).sum(), img)
    assert float(grad.abs().min()) > 0


def test_discriminator_rejects_unknown_architecture():
    with pytest.raises(ValueError, match="'bogus' is not one of orig, skip, resnet"):
        small_D(16, architecture="bogus")


@pytest.mark.parametrize(
    "architecture, names",
    [
        ("resnet", ["b16.fromrgb", "b16.conv0", "b16.conv1", "b16.skip", "b8.conv0", "b8.conv1", "b8.skip"]),
        ("orig", ["b16.fromrgb", "b16.conv0", "b16.conv1", "b8.conv0", "b8.conv1"]),
        ("skip", ["b16.fromrgb", "b16.conv0", "b16.conv1", "b8.fromrgb", "b8.conv0", "b8.conv1"]),
    ],
)
def test_layer_modules_are_in_the_official_freeze_order(architecture, names):
    # Freeze-D's N counts these from the highest resolution down, in the official numbering.
    D = small_D(16, architecture=architecture)
    by_id = {id(m): n for n, m in D.named_modules()}
    assert [by_id[id(m)] for m in D.layer_modules()] == names
    assert D.num_block_layers == len(names)
    assert [D.b16.first_layer_idx, D.b8.first_layer_idx] == [0, D.b16.num_layers]


# ----- truncation and the w_avg tracker -----


def test_truncation_psi_interpolates_towards_w_avg():
    torch.manual_seed(1)
    G = small_G(8).eval()
    G.mapping.w_avg.normal_()
    z = torch.randn(5, 8)
    w = G.mapping(z, None)
    assert w.shape == (5, G.num_ws, 8)
    assert torch.equal(G.mapping(z, None, truncation_psi=1), w)
    assert torch.allclose(G.mapping(z, None, truncation_psi=0), G.mapping.w_avg.expand_as(w))
    half = G.mapping(z, None, truncation_psi=0.5)
    assert torch.allclose(half, (w + G.mapping.w_avg) / 2, atol=1e-6)
    # A cutoff truncates only the first layers' ws.
    cut = G.mapping(z, None, truncation_psi=0, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], G.mapping.w_avg.expand(5, 2, 8))
    assert torch.equal(cut[:, 2:], w[:, 2:])
    # psi = 0 gives every latent the same image: the one of w_avg.
    imgs = G(z, None, truncation_psi=0, noise_mode="const")
    assert torch.allclose(imgs, imgs[:1].expand_as(imgs), atol=1e-5)
    expected = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, 8), noise_mode="const")
    assert torch.allclose(imgs[:1], expected, atol=1e-5)


def test_w_avg_tracks_the_mean_w_in_train_mode_only():
    torch.manual_seed(2)
    G = small_G(8, w_avg_beta=0.9)
    z = torch.randn(6, 8)
    assert torch.equal(G.mapping.w_avg, torch.zeros(8))
    G.eval()
    w = G.mapping(z, None)[:, 0]
    assert torch.equal(G.mapping.w_avg, torch.zeros(8))  # eval mode: untouched
    G.train()
    G.mapping(z, None, update_w_avg=False)
    assert torch.equal(G.mapping.w_avg, torch.zeros(8))
    G.mapping(z, None)
    expected = 0.1 * w.mean(dim=0)  # beta * old + (1 - beta) * batch mean, old = 0
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-6)
    G.mapping(z, None)
    expected = 0.9 * expected + 0.1 * w.mean(dim=0)
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-6)
    # Truncation uses the tracked average.
    assert torch.allclose(G.eval().mapping(z, None, truncation_psi=0)[:, 0], expected.expand(6, 8), atol=1e-6)


# ----- noise modes -----


def test_noise_modes():
    torch.manual_seed(3)
    G = small_G(16).eval()
    z = torch.randn(2, 8)

    def run(mode, seed):
        torch.manual_seed(seed)
        return G(z, None, noise_mode=mode)

    # Fresh networks have noise strength 0: the modes coincide.
    assert torch.equal(run("random", 0), run("none", 0)) and torch.equal(run("const", 0), run("none", 0))
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    const = run("const", 0)
    assert torch.equal(const, run("const", 1))  # deterministic, whatever the RNG state
    none = run("none", 0)
    assert torch.equal(none, run("none", 1))
    assert not torch.allclose(none, const, atol=1e-3)
    random_a, random_b = run("random", 0), run("random", 1)
    assert not torch.allclose(random_a, random_b, atol=1e-3)
    assert torch.equal(random_a, run("random", 0))  # it comes from the global RNG
    # const uses the stored noise buffers: changing one changes the image.
    G.synthesis.b16.conv1.noise_const.add_(1)
    assert not torch.equal(run("const", 0), const)
