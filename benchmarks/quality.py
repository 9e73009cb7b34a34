"""Image quality on small data: train runs on N real labelled digits, score their snapshots.

    python benchmarks/quality.py --n 200,100 --runs ada,fast,noaug --kimg 100
    python benchmarks/quality.py --n 100 --runs noaug --run 'gamma05=--aug=ada --gamma=0.05' --kimg 60

The data is scikit-learn's handwritten digits (`--data=digits`, 1797 scans at 16x16, ten
classes): a seeded subset of N of them is written as an image folder with its labels, and
every run trains `train.py` on that folder with the default validation share withheld, as a
user with N images would. Runs go in parallel, one process and one thread each (`--jobs`),
and the same command reproduces the same numbers.

Every snapshot (one every `--every` kimg) is scored on `--samples` G_ema images, in the
feature space of a digit classifier this script trains on all digits (its held-out accuracy
is printed):

    fid       Frechet distance to all 1797 digits in the classifier's features (lower is better)
    kid       KID in the same space
    classes   classes that hold at least 2% of the samples, counting only samples the classifier
              reads with probability 0.9 or more (10 = every digit is produced, legibly)
    entropy   entropy of the classes of the legible samples in bits (log2 10 = 3.32 for an even spread)
    legible   share of samples the classifier reads as one digit with probability 0.9 or more
    nn        mean pixel distance of samples to their nearest training image, over the same for
              digits never trained on (below 1: the generator copies its training set)
    div       diversity of samples relative to the reals (the trainer's collapse signal)

It prints a table (run x kimg) of FID and classes, and writes OUT/results.json, OUT/quality.png
(FID, classes and p against kimg) and OUT/grids/ (samples sorted by predicted class).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import digit_classifier  # noqa: E402

from ada.builtin import digits  # noqa: E402
from ada.checkpoint import load_checkpoint  # noqa: E402
from ada.files import read_jsonl  # noqa: E402
from ada.images import save_grid  # noqa: E402
from metrics import diversity, formulas  # noqa: E402

# Named runs: the train.py flags that make them. `published` is the ADA rule of the paper exactly.
RUNS: dict[str, list[str]] = {
    "ada": ["--aug=ada"],
    # The paper's rule pinned, so it stays the published one whatever the defaults become (today
    # it is the default, so `ada` and `published` train the same run).
    "published": ["--aug=ada", "--ada-kimg=500", "--target=0.6", "--ada-interval=4"],
    "fast": ["--aug=ada", "--ada-kimg=100"],
    "noaug": ["--aug=noaug"],
    "fixed": ["--aug=fixed", "--p=0.2"],
    # Beyond ADA (issue 20): ADA + LeCam at the weight of StudioGAN's StyleGAN2 CIFAR-10 config,
    # DiffAugment's full policy, and ADA + APA (APA's target and speed those of ADA).
    "lecam": ["--aug=ada", "--lecam=0.3"],
    "diffaug": ["--aug=diffaug", "--diffaug-policy=color,translation,cutout"],
    "apa": ["--aug=ada", "--apa=1"],
    # ADA with a fixed DiffAugment stage before it: cutout, the one DiffAugment transform that ADA's
    # default pipe (bgc) lacks, on every image from the first step while p is still near 0.
    "ada-cutout": ["--aug=ada", "--diffaug-policy=cutout"],
}
# A sample counts towards its class only when the classifier gives that class this probability.
READABLE = 0.9
# Snapshots at or below this kimg are the tick-0 one, taken after the first minibatch.
FIRST_KIMG = 0.08
TRAIN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default="200,100", help="training-set sizes, comma-separated (up to 1797)")
    parser.add_argument("--runs", default="ada,fast,noaug", help=f"named runs: {', '.join(RUNS)}")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=FLAGS",
                        help="an extra run: a name and its train.py flags (repeatable)")
    parser.add_argument("--cfg", default="cpu", help="the preset every run uses (cpu: as measured in the README)")
    parser.add_argument("--kimg", type=float, default=100)
    parser.add_argument("--every", type=float, default=10, help="kimg between scored snapshots")
    parser.add_argument("--tick", type=float, default=2, help="kimg between stats lines (divides --every)")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--data-seed", type=int, default=0, help="which N digits are the training set")
    parser.add_argument("--extra", default="", help="train.py flags added to every run")
    parser.add_argument("--samples", type=int, default=2000, help="generated images per score")
    parser.add_argument("--classifier-epochs", type=int, default=30, help="training epochs of the digit classifier")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--out", default=str(REPO / "runs" / "quality"), help="output folder")
    parser.add_argument("--fresh", action="store_true", help="retrain runs whose results exist")
    args = parser.parse_args(argv)
    ratio = args.every / args.tick
    if abs(ratio - round(ratio)) > 1e-9 or ratio < 1:
        parser.error("--tick must divide --every")
    return args


def run_specs(args: argparse.Namespace) -> dict[str, list[str]]:
    specs: dict[str, list[str]] = {}
    for name in filter(None, args.runs.split(",")):
        if name not in RUNS:
            raise SystemExit(f"error: unknown run {name!r}; named runs: {', '.join(RUNS)} (or give --run NAME=FLAGS)")
        specs[name] = RUNS[name]
    for item in args.run:
        name, sep, flags = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"error: --run {item!r} must be NAME=FLAGS")
        specs[name] = shlex.split(flags)
    return specs


# ----- data and classifier -----


def all_digits() -> tuple[np.ndarray, np.ndarray]:
    return digits(16)


def subset_indices(n: int, data_seed: int, total: int) -> np.ndarray:
    if not 1 <= n <= total:
        raise SystemExit(f"error: --n {n}: there are {total} digits")
    return np.sort(np.random.default_rng(data_seed).permutation(total)[:n])


def write_subset(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """An image folder with dataset.json labels, the layout a user's data has."""
    from PIL import Image

    if (folder / "dataset.json").is_file():
        return
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries = []
    for i in indices:
        name = f"digit{i:04d}.png"
        Image.fromarray(images[i, 0]).save(tmp / name)
        entries.append([name, int(labels[i])])
    (tmp / "dataset.json").write_text(json.dumps({"labels": entries}))
    tmp.rename(folder)


def classifier(out: Path, images: np.ndarray, labels: np.ndarray, epochs: int) -> tuple[Path, float]:
    path, info = out / "classifier.pt", out / "classifier.json"
    if not path.is_file():
        model, accuracy = digit_classifier.train_classifier(images, labels, epochs=epochs)
        digit_classifier.export(model, str(path))
        info.write_text(json.dumps({"heldout_accuracy": accuracy}))
    return path, json.loads(info.read_text())["heldout_accuracy"]


# ----- one run: train, then score every snapshot -----


def run_dir_of(root: Path) -> Path | None:
    dirs = sorted(p for p in root.glob("*") if p.is_dir())
    return dirs[-1] if dirs else None


def train(job: dict[str, Any]) -> Path:
    root = Path(job["root"])
    if job["fresh"]:
        shutil.rmtree(root, ignore_errors=True)
    existing = run_dir_of(root) if root.is_dir() else None
    if existing is not None and (existing / "done").is_file():
        return existing
    if existing is not None and any(existing.glob("network-snapshot-*.pt")):
        # An interrupted run continues from its newest snapshot; resuming is bit-identical, so the
        # numbers are those of an uninterrupted run.
        command = [sys.executable, str(REPO / "train.py"), f"--resume={existing}", f"--kimg={job['kimg']:g}",
                   "--workers=0"]
    else:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        command = [
            sys.executable, str(REPO / "train.py"), f"--data={job['data']}", f"--cfg={job['cfg']}",
            f"--kimg={job['kimg']:g}", f"--tick={job['tick']:g}", f"--snap={round(job['every'] / job['tick'])}",
            "--metrics=none", f"--seed={job['seed']}", f"--outdir={root}", "--workers=0", *job["flags"],
        ]
    with open(root / "train.log", "a") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **TRAIN_ENV, "PYTHONPATH": str(REPO)})
    run_dir = run_dir_of(root)
    if result.returncode != 0 or run_dir is None:
        tail = (root / "train.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{job['name']}: train.py exited with {result.returncode}: {' | '.join(tail)}")
    (run_dir / "done").write_text(shlex.join(command))
    return run_dir


@torch.no_grad()
def generate(G: torch.nn.Module, count: int, seed: int = 0) -> torch.Tensor:
    """uint8 [count, C, H, W] from fixed latents; a conditional G gets the classes in turn."""
    z = torch.randn([count, G.z_dim], generator=torch.Generator().manual_seed(seed))
    out = []
    for lo in range(0, count, 250):
        zb = z[lo:lo + 250]
        c = None
        if G.c_dim > 0:
            c = torch.nn.functional.one_hot(torch.arange(lo, lo + len(zb)) % G.c_dim, G.c_dim).float()
        out.append(G(zb, c, noise_mode="const"))
    return (torch.cat(out) * 127.5 + 128).clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def score_images(samples: torch.Tensor, net: torch.jit.ScriptModule, reference: dict[str, Any]) -> dict[str, float]:
    """Every figure of the module docstring for one set of generated images."""
    rgb = samples.repeat(1, 3, 1, 1) if samples.shape[1] == 1 else samples
    feats = net(rgb, return_features=True).double().numpy()
    probs = net(rgb).softmax(dim=1)
    top, predicted = probs.max(dim=1)
    readable = (predicted != digit_classifier.OTHER) & (top >= READABLE)
    mu, sigma = formulas.mean_cov(feats)
    kid = formulas.kernel_inception_distance(feats, reference["features"], rng=np.random.default_rng(0))
    pixels = samples.double() / 255
    return {
        "fid": formulas.frechet_distance(mu, sigma, *reference["mean_cov"]),
        "kid": kid,
        "classes": diversity.classes_reached(predicted, digit_classifier.NUM_CLASSES, readable=readable),
        "entropy": diversity.class_entropy(predicted[readable], digit_classifier.NUM_CLASSES),
        "legible": float(readable.double().mean()),
        "nn": diversity.memorisation_ratio(pixels, reference["train_pixels"], reference["heldout_pixels"]),
        "div": diversity.diversity_ratio(pixels[:256], reference["train_pixels"][:256]),
    }


@torch.no_grad()
def sorted_grid(samples: torch.Tensor, net: torch.jit.ScriptModule, path: Path, side: int = 10) -> None:
    """The first side^2 samples ordered by predicted class, so missing digits show as missing rows."""
    first = samples[: side * side]
    rgb = first.repeat(1, 3, 1, 1) if first.shape[1] == 1 else first
    order = net(rgb).argmax(dim=1).argsort(stable=True)
    save_grid(first[order].numpy(), path, side, side)


def stats_at(stats: list[dict[str, Any]], kimg: float) -> dict[str, Any]:
    """The controllers' state (p, APA's p_apa, r_t, r_v) from the stats line at this snapshot."""
    line = min(stats, key=lambda s: abs(s["kimg"] - kimg), default={})
    return {key: line.get(key) for key in ("p", "p_apa", "r_t", "r_v")}


def score_run(job: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    cache = run_dir / "scores.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from ada.checkpoint import build_generator

    net = torch.jit.load(job["classifier"])
    images, _ = all_digits()
    train_idx = set(job["indices"])
    reference = {
        "features": np.load(job["real_features"]),
        "train_pixels": torch.from_numpy(images[sorted(train_idx)]).double() / 255,
        "heldout_pixels": torch.from_numpy(images[[i for i in range(len(images)) if i not in train_idx]]).double()
        / 255,
    }
    reference["mean_cov"] = formulas.mean_cov(reference["features"])
    stats = read_jsonl(run_dir / "stats.jsonl")
    grids = Path(job["out"]) / "grids"
    grids.mkdir(exist_ok=True)
    records = []
    for snapshot in sorted(run_dir.glob("network-snapshot-*.pt")):
        ckpt = load_checkpoint(snapshot)
        kimg = ckpt["progress"]["cur_nimg"] / 1000
        G = build_generator(ckpt["G_kwargs"], ckpt["G_ema"], str(snapshot)).eval()
        samples = generate(G, job["samples"])
        record = {"run": job["name"], "n": job["n"], "seed": job["seed"], "kimg": round(kimg, 3),
                  **score_images(samples, net, reference), **stats_at(stats, kimg)}
        records.append(record)
        sorted_grid(samples, net, grids / f"{job['name']}-kimg{round(kimg):04d}.png")
    cache.write_text(json.dumps(records, indent=1))
    return records


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    start = time.time()
    run_dir = train(job)
    records = score_run(job, run_dir)
    print(f"  {job['name']}: done in {(time.time() - start) / 60:.1f} min ({run_dir})", flush=True)
    return records


# ----- report -----


def table(records: list[dict[str, Any]], key: str, fmt: str) -> str:
    runs = list(dict.fromkeys(r["run"] for r in records))
    # The tick-0 snapshot (after one minibatch) is the untrained network: left out of the report.
    kimgs = sorted({round(r["kimg"], 1) for r in records if r["kimg"] > FIRST_KIMG})
    by = {(r["run"], round(r["kimg"], 1)): r for r in records}
    width = max(len(name) for name in runs) + 2
    lines = [f"{key:<{width}}" + "".join(f"{k:>7g}" for k in kimgs)]
    for name in runs:
        cells = [fmt.format(by[name, k][key]) if (name, k) in by and by[name, k][key] is not None else "-"
                 for k in kimgs]
        lines.append(f"{name:<{width}}" + "".join(f"{c:>7s}" for c in cells))
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in records}, reverse=True)
    fig, axes = plt.subplots(3, len(sizes), figsize=(5 * len(sizes), 10), squeeze=False, sharex=True)
    for col, n in enumerate(sizes):
        runs = list(dict.fromkeys(r["run"] for r in records if r["n"] == n))
        for name in runs:
            rows = sorted((r for r in records if r["run"] == name and r["kimg"] > FIRST_KIMG), key=lambda r: r["kimg"])
            label = name.split("-", 1)[1] if name.startswith(f"n{n}-") else name
            for row, key in enumerate(("fid", "classes", "p")):
                axes[row, col].plot([r["kimg"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=label)
        axes[0, col].set_title(f"{n} training images")
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("FID (classifier features)")
        axes[1, col].set_ylabel("classes covered")
        axes[1, col].set_ylim(0, 10.5)
        axes[2, col].set_ylabel("p")
        axes[2, col].set_xlabel("kimg")
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = all_digits()
    clf_path, accuracy = classifier(out, images, labels, args.classifier_epochs)
    print(f"digit classifier: held-out accuracy {accuracy:.4f} ({clf_path})")
    real_features = out / "real_features.npy"
    if not real_features.is_file():
        net = torch.jit.load(str(clf_path))
        with torch.no_grad():
            np.save(real_features, net(torch.from_numpy(images).repeat(1, 3, 1, 1), return_features=True).numpy())
    specs = run_specs(args)
    jobs = []
    for n in (int(v) for v in args.n.split(",")):
        indices = subset_indices(n, args.data_seed, len(images))
        data = out / "data" / f"digits-n{n}-d{args.data_seed}"
        write_subset(data, images, labels, indices)
        for seed in (int(s) for s in args.seeds.split(",")):
            for name, flags in specs.items():
                full = f"n{n}-{name}" + (f"-s{seed}" if seed else "")
                jobs.append(dict(
                    name=full, n=n, seed=seed, data=str(data), cfg=args.cfg, kimg=args.kimg, every=args.every,
                    tick=args.tick, flags=[*flags, *shlex.split(args.extra)], root=str(out / "runs" / full),
                    fresh=args.fresh, classifier=str(clf_path), real_features=str(real_features),
                    indices=indices.tolist(), samples=args.samples, out=str(out),
                ))
    print(f"{len(jobs)} runs, {args.jobs} at a time: {', '.join(j['name'] for j in jobs)}", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        records = [r for rs in pool.map(run_job, jobs) for r in rs]
    results = {"command": sys.argv, "classifier_accuracy": accuracy, "records": records}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    for key, fmt in (("fid", "{:.1f}"), ("classes", "{:d}"), ("nn", "{:.2f}"), ("p", "{:.3f}")):
        print()
        print(table(records, key, fmt))
    plot(records, out / "quality.png")
    print(f"\nwrote {out / 'results.json'}, {out / 'quality.png'}, {out / 'grids'}/")


if __name__ == "__main__":
    main()
