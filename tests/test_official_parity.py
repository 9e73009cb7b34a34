"""Parity with NVIDIA's stylegan2-ada-pytorch itself, not with our imitation of its layout (opt-in).

Set ADA_OFFICIAL_CHECKOUT to a checkout of github.com/NVlabs/stylegan2-ada-pytorch. Its code runs
in a subprocess of its own (its custom ops fall back to their reference implementations on a
CPU): it builds G, D and G_ema with fixed seeds and pickles them as its training loop writes a
snapshot, or, with ADA_OFFICIAL_PICKLE set, loads that real network pickle; and it records what
its networks and its augmentation pipe output. The tests then import the pickle with our importer
and compare.

The pipes are compared under equal random draws: both sides' uniform and normal draws are
replaced by constants, so every image draws the same parameters whatever order each pipe draws
them in, and the parameter laws, matrices, resampling and colour and filter maths are all compared.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ada.official import load_official_pickle
from augment import AugmentPipe, sampling

OFFICIAL = os.environ.get("ADA_OFFICIAL_CHECKOUT")
REAL_PICKLE = os.environ.get("ADA_OFFICIAL_PICKLE")
pytestmark = pytest.mark.skipif(
    not OFFICIAL, reason="set ADA_OFFICIAL_CHECKOUT to a stylegan2-ada-pytorch checkout to compare with it"
)

# Written as training/training_loop.py builds and pickles its networks: small, conditional, with
# activation clamping, in float32 (the custom float16 paths need CUDA).
NETWORKS_SCRIPT = """
import copy, pickle, sys
import torch
sys.path.insert(0, CHECKOUT)
import legacy
from training.networks import Discriminator, Generator

if PICKLE:
    with open(PICKLE, "rb") as f:
        data = legacy.load_network_pkl(f)
else:
    common = dict(channel_base=512, channel_max=64, num_fp16_res=0, conv_clamp=256)
    torch.manual_seed(0)
    G = Generator(z_dim=32, c_dim=4, w_dim=32, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), synthesis_kwargs=common).train().requires_grad_(False)
    D = Discriminator(c_dim=4, img_resolution=16, img_channels=3, architecture="resnet",
                      epilogue_kwargs=dict(mbstd_group_size=4), **common).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    # Training moves G away from G_ema and w_avg away from 0: importing must keep each network's own.
    with torch.no_grad():
        for p in G.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        G_ema.mapping.w_avg.copy_(torch.randn_like(G_ema.mapping.w_avg))
    data = dict(training_set_kwargs=dict(resolution=16))
    for name, module in [("G", G), ("D", D), ("G_ema", G_ema)]:
        data[name] = copy.deepcopy(module).eval().requires_grad_(False).cpu()
    with open(OUT + "/network-snapshot.pkl", "wb") as f:
        pickle.dump(data, f)
G, D, G_ema = data["G"], data["D"], data["G_ema"]
gen = torch.Generator().manual_seed(1)
z = torch.randn([4, G.z_dim], generator=gen)
c = torch.nn.functional.one_hot(torch.arange(4) % max(G.c_dim, 1), max(G.c_dim, 1)).float()[:, :G.c_dim]
img = torch.rand([4, G.img_channels, G.img_resolution, G.img_resolution], generator=gen) * 2 - 1
with torch.no_grad():
    out = dict(
        z=z, c=c, img=img,
        G=G(z, c, noise_mode="const"), G_ema=G_ema(z, c, noise_mode="const"),
        G_ema_trunc=G_ema(z, c, truncation_psi=0.5, noise_mode="const"),
        D=D(img, c),
    )
torch.save(out, OUT + "/outputs.pt")
"""

# Constant draws: torch.rand gives R and torch.randn gives N, on whatever shape is asked for.
PIPE_SCRIPT = """
import sys
import torch
sys.path.insert(0, CHECKOUT)
from training.augment import AugmentPipe

bgc = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1,
           lumaflip=1, hue=1, saturation=1)
augpipe_specs = dict(bgc=bgc, bgcfnc=dict(bgc, imgfilter=1, noise=1, cutout=1))  # as its train.py names them

images = torch.load(OUT + "/images.pt")
results = {}
for preset, p, R, N in CASES:
    pipe = AugmentPipe(**augpipe_specs[preset])
    pipe.p.copy_(torch.tensor(p))
    rand, randn = torch.rand, torch.randn
    torch.rand = lambda shape, device=None, **kw: torch.full(list(shape), R, device=device)
    torch.randn = lambda shape, device=None, **kw: torch.full(list(shape), N, device=device)
    try:
        with torch.no_grad():
            results[(preset, p, R, N)] = pipe(images.clone())
    finally:
        torch.rand, torch.randn = rand, randn
torch.save(results, OUT + "/augmented.pt")
"""
# (preset, p, R, N): R < p applies every transform (and at p = 1 every rotation); R = 0.75 flips,
# turns by 3 quarters and translates by +1/16; N sets the lognormal and normal draws.
PIPE_CASES = [
    ("bgc", 1.0, 0.75, 0.5),
    ("bgc", 0.5, 0.3, -0.8),
    ("bgcfnc", 1.0, 0.75, 0.5),
    ("bgcfnc", 0.6, 0.2, 1.3),
]


def run_official(script: str, **values: object) -> None:
    """Runs `script` with the official code importable, after lines setting `values` as its globals."""
    header = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    result = subprocess.run(
        [sys.executable, "-c", header + script], capture_output=True, text=True, timeout=900,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, f"the official code failed:\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def official_networks(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    out = tmp_path_factory.mktemp("official")
    run_official(NETWORKS_SCRIPT, CHECKOUT=str(Path(OFFICIAL).resolve()), PICKLE=REAL_PICKLE, OUT=str(out))
    pickle_path = Path(REAL_PICKLE) if REAL_PICKLE else out / "network-snapshot.pkl"
    return pickle_path, torch.load(out / "outputs.pt")


def test_imported_networks_give_the_official_outputs(official_networks):
    path, expected = official_networks
    imported = load_official_pickle(path)
    z, c, img = expected["z"], expected["c"], expected["img"]
    c = c if imported.G.c_dim > 0 else None
    with torch.no_grad():
        outputs = {
            "G": imported.G.eval()(z, c, noise_mode="const"),
            "G_ema": imported.G_ema.eval()(z, c, noise_mode="const"),
            "G_ema_trunc": imported.G_ema(z, c, truncation_psi=0.5, noise_mode="const"),
            "D": imported.D.eval()(img, c),
        }
    for name, ours in outputs.items():
        torch.testing.assert_close(ours, expected[name], rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert not torch.allclose(outputs["G"], outputs["G_ema"])  # each network its own weights


def test_augment_pipe_matches_the_official_pipe_under_equal_draws(tmp_path, monkeypatch):
    torch.manual_seed(3)
    images = torch.rand([3, 3, 32, 32]) * 2 - 1
    torch.save(images, tmp_path / "images.pt")
    run_official(PIPE_SCRIPT, CHECKOUT=str(Path(OFFICIAL).resolve()), OUT=str(tmp_path), CASES=PIPE_CASES)
    expected = torch.load(tmp_path / "augmented.pt")
    for preset, p, R, N in PIPE_CASES:
        monkeypatch.setattr(sampling.Rng, "rand", lambda self, *shape, R=R: torch.full(shape, R, device=self.device))
        monkeypatch.setattr(sampling.Rng, "randn", lambda self, *shape, N=N: torch.full(shape, N, device=self.device))
        with torch.no_grad():
            ours = AugmentPipe(preset, p=p)(images.clone())
        assert (ours - images).abs().mean() > 0.1  # transformed: the comparison is not of two identities
        torch.testing.assert_close(ours, expected[(preset, p, R, N)], rtol=1e-4, atol=2e-4,
                                   msg=lambda m, case=(preset, p, R, N): f"{case}: {m}")
