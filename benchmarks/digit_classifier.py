"""A small digit classifier for the quality benchmark: its penultimate layer is the feature space
of FID and KID on the digits, and its predictions count which classes a generator covers.

Inception features mean little on 16x16 handwritten digits; a classifier trained on the very
images the GAN learns from gives a feature space in which distance means "a different digit or
a different way of writing it". It is exported as TorchScript with the interface of a
`--features` network (uint8 [N, C, H, W] -> float [N, D]; `return_features=False` gives the
class logits), so the metrics package reads it like any other feature network.

A classifier trained on digits alone puts every blob into some digit class, with confidence:
an untrained generator's noise would "cover" most classes. So it learns an eleventh class,
`OTHER`, from things that are not one digit: smooth random blobs (what an untrained or broken
generator draws) and two digits of different classes laid over each other (what a generator
that has not decided draws). A sample is readable when it is a digit class with high probability.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
OTHER = NUM_CLASSES  # the "not a digit" class
FEATURE_DIM = 128


class DigitClassifier(nn.Module):
    def __init__(self, resolution: int = 16):
        super().__init__()
        self.resolution = resolution
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.embed = nn.Linear(64 * (resolution // 4) ** 2, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES + 1)

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        """uint8-range images [N, C, H, W] (any C: the channels are averaged) -> logits, or features."""
        x = images.to(torch.float32).mean(dim=1, keepdim=True) / 127.5 - 1
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=[self.resolution, self.resolution], mode="bilinear", antialias=True,
                              align_corners=False)
        h = self.embed(self.body(x).flatten(1)).relu()
        return h if return_features else self.head(h)


def _shifted(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel: the classifier should not care where a GAN puts its digit."""
    dx, dy = torch.randint(-1, 2, [2], generator=gen).tolist()
    return torch.roll(images, shifts=(dy, dx), dims=(2, 3))


def non_digits(digits: torch.Tensor, labels: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` images of the OTHER class in the value range of `digits` [N, 1, R, R] (0..255): half
    smooth blobs at three scales, half overlays of two digits of different classes."""
    res = digits.shape[-1]
    n_blobs = count // 2
    cells = [2, 4, 8][int(torch.randint(3, [], generator=gen))]
    noise = torch.rand([n_blobs, 1, cells, cells], generator=gen)
    smooth = F.interpolate(noise, size=[res, res], mode="bicubic", align_corners=False)
    gain = torch.rand([n_blobs, 1, 1, 1], generator=gen) * 12 + 2
    blobs = torch.sigmoid((smooth - 0.5) * gain) * 255
    a = torch.randint(len(digits), [count - n_blobs], generator=gen)
    b = torch.randint(len(digits), [count - n_blobs], generator=gen)
    b = torch.where(labels[a] == labels[b], (b + 1) % len(digits), b)
    overlays = torch.maximum(digits[a], torch.roll(digits[b], shifts=(0, 2), dims=(2, 3)))
    return torch.cat([blobs, overlays])


def train_classifier(
    images: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = 30, heldout_share: float = 0.2
) -> tuple[DigitClassifier, float]:
    """Train on a seeded (1 - heldout_share) of uint8 images [N, 1, R, R] and on non-digits; return it and
    its accuracy on the held-out digits (a held-out digit called OTHER counts as an error)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    y = torch.from_numpy(np.asarray(labels)).long()
    order = torch.randperm(len(x), generator=gen)
    n_heldout = int(len(x) * heldout_share)
    heldout, train = order[:n_heldout], order[n_heldout:]
    model = DigitClassifier(images.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    other = torch.full([16], OTHER)
    for _ in range(epochs):
        for idx in train[torch.randperm(len(train), generator=gen)].split(64):
            batch = torch.cat([x[idx], non_digits(x[train], y[train], len(other), gen)])
            loss = F.cross_entropy(model(_shifted(batch, gen)), torch.cat([y[idx], other]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[heldout]).argmax(1) == y[heldout]).float().mean()) if n_heldout else float("nan")
    return model, accuracy


def export(model: DigitClassifier, path: str) -> None:
    """TorchScript, so `--features PATH` and `metrics.load_torchscript_features` can load it."""
    torch.jit.script(model.eval()).save(path)
