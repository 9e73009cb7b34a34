"""The `ada` command: `ada train`, `ada generate`, `ada dataset`, and the tools around a trained model.

`ada train` takes the options of the official stylegan2-ada-pytorch train.py, with the same
names and meanings (booleans as `--mirror=1`), plus ours. User mistakes end in one line on
stderr and exit code 1 (2 for malformed options), never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ada import config, config_checks, options
from ada.augment_preview import augment_command
from ada.compare import compare
from ada.errors import UserError
from ada.evaluation import metrics_command
from ada.projector import project_command
from ada.style_mixing import style_mixing_command
from ada.video import video_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """StyleGAN2 with adaptive discriminator augmentation, for small datasets."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command("train", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@options.train_options
@click.pass_context
def train_command(ctx: click.Context, dry_run: bool, set_values: tuple[str, ...], help_config: bool,
                  **flags: Any) -> None:
    """Train a StyleGAN2 generator with adaptive discriminator augmentation.

    \b
    Start a run:        --data=my_images --outdir=runs   (see --cfg for the preset)
    Continue a run:     --resume=runs/00003-my_images-...   (its options are read from the directory)
    Fine-tune:          --resume=path/network-snapshot-NNNNNN.pt --data=other_images

    Booleans are written --mirror=1. "from preset" defaults come from --cfg; --help-config lists them.
    """
    from ada import launch

    preset = flags.pop("cfg")
    given = options.overrides(flags, set_values)
    if help_config:
        click.echo(options.help_config(config.load_preset(launch.preset_for_machine(preset or "auto", quiet=True))))
        return
    config_checks.check_flag_combinations(given)
    # How the user started it, for the commands the run's summary prints: `ada train` or `python path/train.py`.
    script = sys.argv[0] if sys.argv[0].endswith(".py") else ctx.command_path
    command = ctx.command_path if ctx.parent is not None else f"python {script}"
    launch.train(preset, given, dry_run=dry_run, command=command)


@cli.command("generate")
@click.option("--network", required=True, help="Checkpoint, run directory or official network pickle")
@click.option("--seeds", help="Seeds, e.g. 0-15 or 1,5,9", metavar="LIST")
@click.option("--projected-w", help="Render the w of `ada project` (projected_w.npz) instead of seeds",
              metavar="FILE")
@click.option("--trunc", "truncation_psi", type=float, default=1.0, show_default=True, help="Truncation psi")
@click.option("--class", "class_idx", type=int, help="Class label for a conditional network")
@click.option("--noise-mode", type=click.Choice(["const", "random", "none"]), default="const", show_default=True)
@click.option("--outdir", required=True, help="Where to write the images", metavar="DIR")
@click.pass_context
def generate_command(ctx: click.Context, projected_w: str | None, **kwargs: Any) -> None:
    """Generate images from a trained network."""
    from ada.generate import generate, render_projected_w

    if (kwargs["seeds"] is None) == (projected_w is None):
        raise UserError("give --seeds (e.g. 0-15) or --projected-w FILE, one of the two")
    if projected_w is not None:
        for param, flag in (("truncation_psi", "--trunc"), ("class_idx", "--class")):
            if ctx.get_parameter_source(param) is not click.core.ParameterSource.DEFAULT:
                raise UserError(f"{flag} cannot be given with --projected-w: a projected w is rendered as it is "
                                "(truncation and the class only act on the way from a seed to w)")
        render_projected_w(kwargs["network"], projected_w, kwargs["noise_mode"], kwargs["outdir"])
        return
    generate(**kwargs)


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


def main(argv: list[str] | None = None, prog_name: str | None = None, command: click.Command = cli) -> None:
    """Run `command` (the `ada` group, or `train_command` alone for train.py) with our error handling."""
    try:
        command.main(args=argv, prog_name=prog_name, standalone_mode=False)
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
