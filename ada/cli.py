"""The `ada` command: `ada train`, `ada generate`, `ada dataset`, and the tools around a trained model.

`ada train` takes the options of the official stylegan2-ada-pytorch train.py, with the same
names and meanings (booleans as `--mirror=1`), plus ours. User mistakes end in one line on
stderr and exit code 1 (2 for malformed options), never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ada.augment_preview import augment_command
from ada.compare import compare
from ada.config import check_flag_combinations
from ada.errors import UserError
from ada.evaluation import metrics_command
from ada.projector import project_command
from ada.style_mixing import style_mixing_command
from ada.video import video_command


def _metrics_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() in ("none", ""):
        return []
    return [m.strip() for m in value.split(",") if m.strip()]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{'aug.mode': 'ada'} -> {'aug': {'mode': 'ada'}}, skipping options the user did not give."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


# Command-line option -> config field.
TRAIN_FIELDS = {
    "outdir": "outdir", "gpus": "gpus", "snap": "snap", "seed": "seed", "data": "data", "cond": "cond",
    "subset": "subset", "mirror": "mirror", "gamma": "loss.r1_gamma", "kimg": "kimg", "batch": "batch",
    "batch_gpu": "batch_gpu",
    "aug": "aug.mode", "p": "aug.p", "target": "aug.target", "augpipe": "aug.pipe", "aug_extra": "aug.extra",
    "resume": "resume",
    "freezed": "freezed", "fp32": "fp32", "bf16": "bf16", "nhwc": "nhwc", "allow_tf32": "allow_tf32",
    "nobench": "nobench", "compile": "compile", "workers": "workers", "tick": "tick", "val": "val",
    "ada_kimg": "aug.ada_kimg",
    "ada_interval": "aug.ada_interval", "ada_start_kimg": "aug.ada_start_kimg", "ada_heuristic": "aug.heuristic",
    "p_max": "aug.p_max",
    "lecam": "loss.lecam", "lecam_decay": "loss.lecam_decay", "diffaug_policy": "aug.diffaug_policy",
    "apa": "aug.apa", "apa_target": "aug.apa_target", "apa_kimg": "aug.apa_kimg",
    "wandb_project": "wandb.project", "wandb_entity": "wandb.entity", "wandb_group": "wandb.group",
    "wandb_name": "wandb.name", "wandb_mode": "wandb.mode", "features": "features", "ppl_net": "ppl_net",
    "pr_net": "pr_net", "tensorboard": "tensorboard",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """StyleGAN2 with adaptive discriminator augmentation, for small datasets."""


@cli.command("train")
@click.option("--outdir", help="Where to make run directories [default: runs]", metavar="DIR")
@click.option("--gpus", type=click.IntRange(min=1), help="Number of GPUs [default: 1]", metavar="INT")
@click.option("--snap", type=click.IntRange(min=1), help="Snapshot interval in ticks [default: 50]", metavar="INT")
@click.option("--metrics", help="Comma-separated metrics or 'none' [default: fid50k_full]", metavar="LIST")
@click.option("--seed", type=int, help="Random seed [default: 0]", metavar="INT")
@click.option("-n", "--dry-run", is_flag=True, help="Print the options and exit")
@click.option("--data", help="Image folder, dataset zip, or built-in name (lfw-faces)", metavar="PATH")
@click.option("--cond", type=bool, help="Train a class-conditional model [default: false]", metavar="BOOL")
@click.option("--subset", type=click.IntRange(min=1), help="Train on a fixed random subset of N images", metavar="INT")
@click.option("--mirror", type=bool, help="Add x-flipped copies of the images [default: false]", metavar="BOOL")
@click.option("--cfg", "preset", default="auto", help="Preset from configs/ [default: auto]", metavar="NAME")
@click.option("--gamma", type=float, help="R1 regularisation weight", metavar="FLOAT")
@click.option("--kimg", type=float, help="Training length in thousands of real images", metavar="KIMG")
@click.option("--batch", type=click.IntRange(min=1), help="Total batch size over all GPUs", metavar="INT")
@click.option("--batch-gpu", type=click.IntRange(min=1), help="Images per GPU per pass (gradient accumulation)")
@click.option("--aug", type=click.Choice(["ada", "noaug", "fixed", "diffaug"]), help="Augmentation mode [default: ada]")
@click.option("--p", type=float, help="Augmentation probability for --aug=fixed", metavar="FLOAT")
@click.option("--target", type=float, help="ADA target value of the overfitting heuristic [default: 0.6]")
@click.option("--augpipe", help="Augmentation pipeline preset [default: bgc]", metavar="NAME")
@click.option("--aug-extra", help="Kornia augmentations after the pipeline, with probability p: "
              "perspective[:0.3], erasing[:0.33], blur[:1], sharpness[:0.5]", metavar="LIST")
@click.option("--resume", help="Checkpoint, run directory, or official network pickle", metavar="PATH")
@click.option("--freezed", type=click.IntRange(min=0), help="Freeze the first N layers of D [default: 0]")
@click.option("--fp32", type=bool, help="Disable mixed precision [default: false]", metavar="BOOL")
@click.option("--bf16", type=bool, help="Mixed precision in bfloat16 instead of float16", metavar="BOOL")
@click.option("--nhwc", type=bool, help="Channels-last memory format in the fp16 layers", metavar="BOOL")
@click.option("--allow-tf32", type=bool, help="Allow TF32 matmuls and convolutions [default: false]", metavar="BOOL")
@click.option("--nobench", type=bool, help="Disable the cuDNN benchmark mode [default: false]", metavar="BOOL")
@click.option("--compile", type=bool, help="torch.compile G and D for the main phases [default: false]",
              metavar="BOOL")
@click.option("--workers", type=click.IntRange(min=0), help="Data loader worker processes [default: 3]")
@click.option("--tick", type=float, help="Progress report interval in kimg [default: 4]", metavar="KIMG")
@click.option("--val", type=float, help="Share of images withheld for the r_v monitor [default: 0.05]")
@click.option("--ada-kimg", type=float, help="ADA speed: kimg for p to move by 1 [default: 500]")
@click.option("--ada-start-kimg", type=float, help="kimg before the adaptive p may move [default: 0]")
@click.option("--ada-interval", type=click.IntRange(min=1), help="Minibatches between p updates [default: 4]")
@click.option("--ada-heuristic", type=click.Choice(["rt", "rv"]), help="Heuristic that drives p [default: rt]")
@click.option("--p-max", type=float, help="Upper bound for the adaptive p [default: 1]", metavar="FLOAT")
@click.option("--diffaug-policy", help="DiffAugment policies for --aug=diffaug [default: color,translation,cutout]",
              metavar="LIST")
@click.option("--lecam", type=float, help="LeCam penalty weight on D's logits [default: 0, off]", metavar="FLOAT")
@click.option("--lecam-decay", type=float, help="EMA decay of the LeCam anchors [default: 0.99]", metavar="FLOAT")
@click.option("--apa", type=bool, help="Adaptive pseudo augmentation (APA) [default: false]", metavar="BOOL")
@click.option("--apa-target", type=float, help="APA target of the overfitting heuristic [default: --target]",
              metavar="FLOAT")
@click.option("--apa-kimg", type=float, help="APA speed: kimg for p_apa to move by 1 [default: --ada-kimg]",
              metavar="KIMG")
@click.option("--features", help="TorchScript feature network for the metrics instead of Inception", metavar="PATH")
@click.option("--pr-net", help="TorchScript feature network for precision/recall (NVIDIA's vgg16.pt)",
              metavar="PATH")
@click.option("--ppl-net", help="TorchScript network for the PPL distance", metavar="PATH")
@click.option("--tensorboard", type=bool, help="TensorBoard event files in the run directory "
              "[default: on when tensorboard is installed]", metavar="BOOL")
@click.option("--wandb-project", help="Log to this wandb project (off when not given)")
@click.option("--wandb-entity", help="wandb entity (team or user)")
@click.option("--wandb-group", help="wandb group [default: the dataset name]")
@click.option("--wandb-name", help="wandb run name [default: the run directory name]")
@click.option("--wandb-mode", type=click.Choice(["online", "offline", "disabled"]), help="wandb mode")
def train_command(preset: str, dry_run: bool, metrics: str | None, **options: Any) -> None:
    """Train a StyleGAN2 generator with adaptive discriminator augmentation."""
    from ada import launch

    flat = {TRAIN_FIELDS[k]: v for k, v in options.items()}
    flat["metrics"] = _metrics_list(metrics)
    overrides = _nest(flat)
    check_flag_combinations(overrides)
    launch.train(preset, overrides, dry_run=dry_run)


@cli.command("generate")
@click.option("--network", required=True, help="Checkpoint, run directory or official network pickle")
@click.option("--seeds", help="Seeds, e.g. 0-15 or 1,5,9", metavar="LIST")
@click.option("--projected-w", help="Render the w of `ada project` (projected_w.npz) instead of seeds",
              metavar="FILE")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="Truncation psi")
@click.option("--class", "class_idx", type=int, help="Class label for a conditional network")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--outdir", required=True, help="Where to write the images", metavar="DIR")
def generate_command(projected_w: str | None, **options: Any) -> None:
    """Generate images from a trained network."""
    from ada.generate import generate, render_projected_w

    if (options["seeds"] is None) == (projected_w is None):
        raise UserError("give --seeds (e.g. 0-15) or --projected-w FILE, one of the two")
    if projected_w is not None:
        render_projected_w(options["network"], projected_w, options["noise_mode"], options["outdir"])
        return
    generate(**options)


@cli.command("dataset")
@click.option("--source", required=True, help="Folder (or zip) of images of any size", metavar="PATH")
@click.option("--dest", required=True, help="Output zip", metavar="ZIP")
@click.option("--resolution", type=int, required=True, help="Output side length (a power of two)")
@click.option("--channels", type=click.Choice(["auto", "1", "3"]), default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --dest if it exists")
def dataset_command(source: str, dest: str, resolution: int, channels: str, overwrite: bool) -> None:
    """Convert images of any size into a training zip: centre crop and resize."""
    from ada.dataset_tool import convert

    convert(source, dest, resolution, None if channels == "auto" else int(channels), overwrite=overwrite)


cli.add_command(compare)
cli.add_command(metrics_command)
cli.add_command(project_command)
cli.add_command(style_mixing_command)
cli.add_command(video_command)
cli.add_command(augment_command)


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    try:
        cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
