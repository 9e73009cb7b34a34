"""Kornia's AdaptiveDiscriminatorAugmentation preset against ADA as the paper defines it, on the same images.

    python benchmarks/kornia_ada.py --data lfw-faces --p 0.2,0.5,0.8

Ours is AugmentPipe("bgc") with the AdaController; kornia's is
kornia.augmentation.presets.ada.AdaptiveDiscriminatorAugmentation with its defaults. Printed as
markdown tables (benchmarks/README.md holds a copy):

1. the laws: each implementation's transforms and their settings, read from the objects;
2. what they do to the same real images at each p: the share of images left exactly as they
   were, the mean absolute change of a pixel and of an image's mean (in [-1, 1] units), and the
   forward speed ratio, measured in this one run;
3. the controllers, fed the same discriminator: p against kimg when D labels a given share of the
   reals correctly, one update call per minibatch (as kornia's docstring suggests) at --batch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from kornia.augmentation.presets.ada import AdaptiveDiscriminatorAugmentation

from ada.controller import ADA_KIMG, AdaController
from ada.data import open_dataset
from augment import GROUPS, AugmentPipe


def ours_laws(pipe: AugmentPipe) -> list[tuple[str, str]]:
    s = pipe
    laws = {
        "xflip": "mirror, half of the times it is drawn",
        "rotate90": "k quarter turns, k uniform in 0..3",
        "xint": f"integer shift, uniform within +-{s.xint_max:g} of the size",
        "scale": f"isotropic, lognormal, std {s.scale_std:g} * ln 2",
        "rotate": f"uniform +-{180 * s.rotate_max:g} deg, before and after aniso, each with prob 1 - sqrt(1 - p)",
        "aniso": f"anisotropic, lognormal, std {s.aniso_std:g} * ln 2",
        "xfrac": f"fractional shift, normal, std {s.xfrac_std:g} of the size",
        "brightness": f"additive, normal, std {s.brightness_std:g}",
        "contrast": f"lognormal, std {s.contrast_std:g} * ln 2",
        "lumaflip": "luma flip, half of the times it is drawn",
        "hue": f"rotation about the luma axis, uniform +-{180 * s.hue_max:g} deg",
        "saturation": f"lognormal, std {s.saturation_std:g} * ln 2",
    }
    names = GROUPS["blit"] + GROUPS["geom"] + GROUPS["color"]
    return [(name, laws[name]) for name in names if s.strengths[name] > 0]


def kornia_laws(preset: AdaptiveDiscriminatorAugmentation) -> list[tuple[str, str]]:
    return [(type(m).__name__, repr(m).split("(", 1)[1].rstrip(")")) for m in preset.children()]


def print_laws(pipe: AugmentPipe, preset: AdaptiveDiscriminatorAugmentation, batch: int) -> None:
    print("| | ADA (paper, ours: AugmentPipe bgc + AdaController) | kornia AdaptiveDiscriminatorAugmentation |")
    print("| --- | --- | --- |")
    print("| what p is | the probability of each transform, drawn independently per image | "
          "the probability that an image gets the whole sequence, each member then with its own p |")
    ours = "<br>".join(f"{name}: {law}" for name, law in ours_laws(pipe))
    theirs = "<br>".join(f"{name}: {law}" for name, law in kornia_laws(preset))
    print(f"| transforms | {ours} | {theirs} |")
    print("| geometric resampling | all geometric transforms composed, one resampling, reflection padding, "
          "wavelet anti-aliasing | one resampling per transform, zero padding, plain bilinear |")
    print(f"| heuristic | r_t = E[sign D(x_real)], target 0.6 | EMA (lambda {preset.ema_lambda}) of D's accuracy on "
          f"reals = (r_t + 1) / 2, target {preset.target_real_acc} (r_t {2 * preset.target_real_acc - 1:.2f}) |")
    step = batch * 4 / (ADA_KIMG * 1000)
    print(f"| controller step | every 4 minibatches, p += sign(r_t - target) * batch * 4 / (500 * 1000): "
          f"{step:.2e} at batch {batch}, so p can cross [0, 1] in 500 kimg at any batch | every "
          f"{preset.update_every} calls, p += +-{preset.adjustment_speed} (whatever the batch) |")
    print(f"| value range | p in [0, 1], starting at 0 | p in [0, max_p = {preset.max_p}], starting at {preset.p} |")
    print("| flips at p | half of the images the flip is drawn for: the original orientation stays the more "
          "likely one at every p < 1 | every selected image (RandomHorizontalFlip p=1): at p = 0.5 the two "
          "orientations are equally likely, above it the mirrored one is the more likely |")
    print()


def pixel_stats(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float, float]:
    """(unchanged share, mean |pixel change|, mean |change of the image mean|), [-1, 1] units."""
    unchanged = (after == before).flatten(1).all(dim=1).float().mean()
    pixel = (after - before).abs().mean()
    mean = (after.mean(dim=(1, 2, 3)) - before.mean(dim=(1, 2, 3))).abs().mean()
    return float(unchanged), float(pixel), float(mean)


def kornia_apply(preset: AdaptiveDiscriminatorAugmentation, images: torch.Tensor) -> torch.Tensor:
    """Kornia's colour transforms expect [0, 1] images: convert there and back."""
    return preset((images + 1) / 2) * 2 - 1


def seconds_per_call(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_measured(images: torch.Tensor, ps: list[float], draws: int, repeats: int) -> None:
    print(f"Measured on the same {images.shape[0]} real images ({draws} draws each), [-1, 1] units:")
    print()
    print("| p | implementation | unchanged | mean abs pixel change | mean abs change of the image mean | "
          "forward img/s ratio kornia/ours |")
    print("| --- | --- | --- | --- | --- | --- |")
    pipe = AugmentPipe("bgc")
    preset = AdaptiveDiscriminatorAugmentation()
    batch = images.repeat(draws, 1, 1, 1)
    for p in ps:
        pipe.p = p
        preset.p = p
        with torch.no_grad():
            ours = pixel_stats(batch, pipe(batch))
            theirs = pixel_stats(batch, kornia_apply(preset, batch))
            t_ours = seconds_per_call(lambda: pipe(images), repeats)
            t_kornia = seconds_per_call(lambda: kornia_apply(preset, images), repeats)
        for name, stats, ratio in (("ours", ours, ""), ("kornia", theirs, f"{t_ours / t_kornia:.2f}")):
            unchanged, pixel, mean = stats
            print(f"| {p:g} | {name} | {unchanged:.1%} | {pixel:.3f} | {mean:.3f} | {ratio} |")
    print()


def simulate(accuracy: float, kimg: float, batch: int) -> tuple[list[float], list[float]]:
    """p after each minibatch for both controllers when D labels `accuracy` of the reals correctly."""
    ours = AdaController()
    preset = AdaptiveDiscriminatorAugmentation()
    n = round(batch * accuracy)
    signs = torch.cat([torch.ones(n), -torch.ones(batch - n)])  # sign of D's logit on each real
    p_ours, p_kornia = [], []
    for batch_idx in range(1, int(kimg * 1000 / batch) + 1):
        ours.accumulate(signs)
        ours.step(batch_idx, batch)
        preset.update(accuracy)
        p_ours.append(ours.p)
        p_kornia.append(preset.p)
    return p_ours, p_kornia


def print_controllers(batch: int, marks: list[float]) -> None:
    print(f"Controllers fed the same D (one update call per minibatch of {batch}): p at each kimg")
    print()
    print("| D's accuracy on reals (r_t) | controller | " + " | ".join(f"{k:g} kimg" for k in marks) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in marks) + " |")
    for accuracy in (0.5, 0.75, 0.9, 1.0):
        p_ours, p_kornia = simulate(accuracy, max(marks), batch)
        for name, ps in (("ours", p_ours), ("kornia", p_kornia)):
            values = [ps[int(k * 1000 / batch) - 1] for k in marks]
            print(f"| {accuracy:.2f} ({2 * accuracy - 1:.2f}) | {name} | " + " | ".join(f"{v:.3f}" for v in values)
                  + " |")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="lfw-faces", help="real images: folder, zip or built-in name")
    parser.add_argument("--p", default="0.2,0.5,0.8", help="augmentation probabilities to measure at")
    parser.add_argument("--draws", type=int, default=8, help="augmentations of each image per p")
    parser.add_argument("--batch", type=int, default=32, help="minibatch of the controller simulation")
    parser.add_argument("--kimg", default="1,10,20,50,100", help="where to read p in the controller simulation")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per p and side")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset = open_dataset(args.data)
    reals, _ = dataset.batch(list(range(len(dataset))))
    images = reals.float() / 127.5 - 1
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)  # kornia's colour transforms need RGB
    print(f"{len(dataset)} images of {args.data}, {images.shape[2]}x{images.shape[3]}, threads {args.threads}")
    print()
    print_laws(AugmentPipe("bgc"), AdaptiveDiscriminatorAugmentation(), args.batch)
    print_measured(images, [float(p) for p in args.p.split(",")], args.draws, args.repeats)
    print_controllers(args.batch, [float(k) for k in args.kimg.split(",")])


if __name__ == "__main__":
    main()
