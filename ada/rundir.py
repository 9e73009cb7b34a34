"""A run directory: its name and number, what it records, and how a run is continued from it.

A run writes into outdir/NNNNN-description: training_options.json, stats.jsonl (one line a
tick), log.txt and log.jsonl, the sample grids (reals.png, fakes*.png, reals_and_fakes.png) and
its snapshots.

`--resume RUN_DIR` continues that run in place: its options come from the directory's
`training_options.json` (or, without one, from its newest snapshot), so no other flag is needed.
`--kimg` may extend it, and options that only say how to run it (GPUs, workers, precision
switches, ticks, snapshots, metrics, wandb) may change. An option that would change the run
itself (data, preset, batch, gamma, augmentation, any `defines_run` field) is refused: that is
a fine-tune into a new run, from one of its snapshot files.

The end of a run prints `summary(...)`: where it got to, the files it left and the commands
that continue from them.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ada import config, field_types
from ada.build import diffaug_policy
from ada.checkpoint import latest_snapshot, load_checkpoint
from ada.config import TrainConfig, preset_label
from ada.errors import UserError, one_line
from ada.files import atomic_write_text, remove_stale_temporaries, trim_jsonl
from ada.images import grid_shape, save_grid, save_png, side_by_side, tile, to_uint8
from ada.progress import format_duration

OPTIONS_FILE = "training_options.json"
# Written by versions before the dry run became a command-line action rather than a config field.
_RETIRED_KEYS = ("dry_run",)


def run_description(cfg: TrainConfig, data_name: str) -> str:
    """The part of the run directory's name after its number: data, preset and what sets the run apart."""
    parts = [data_name, preset_label(cfg.cfg)]
    if cfg.cond:
        parts.append("cond")
    if cfg.mirror:
        parts.append("mirror")
    parts.append(cfg.aug.mode if cfg.aug.mode != "fixed" else f"p{cfg.aug.p:g}")
    if cfg.aug.mode == "ada":
        parts.append(f"target{cfg.aug.target:g}")
    if cfg.aug.mode not in ("diffaug", "noaug"):
        parts.append(cfg.aug.pipe)
    policy = diffaug_policy(cfg.aug)
    if policy is not None:
        parts.append(("" if cfg.aug.mode == "diffaug" else "diffaug-") + policy.replace(",", "-"))
    if cfg.aug.apa:
        parts.append("apa")
    if cfg.loss.lecam:
        parts.append(f"lecam{cfg.loss.lecam:g}")
    if cfg.resume:
        parts.append("resume")
    if cfg.freezed:
        parts.append(f"freezed{cfg.freezed}")
    return "-".join(parts)


def make_run_dir(outdir: Path, desc: str) -> Path:
    """outdir/NNNNN-desc with the next free number.

    Processes started together may pick the same number: the one whose mkdir loses takes the next,
    and the one after, without listing the folder again (a network file system's listing may lag
    behind its mkdir for a while).
    """
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        ids = [int(m.group(1)) for p in outdir.iterdir() if (m := re.match(r"([0-9]+)-", p.name))]
        number = max(ids, default=-1) + 1
        while True:
            run_dir = outdir / f"{number:05d}-{desc}"
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                number += 1
    except OSError as exc:
        raise UserError(f"--outdir={outdir}: cannot create a run directory in it ({exc.strerror})") from None


def open_run_dir(run_dir: Path, cfg: TrainConfig, stats_lines: int, say: Callable[[str], None]) -> int:
    """Records the options and tidies what a crash left; returns how many lines stats.jsonl keeps.

    `stats_lines` is how many ticks the snapshot resumed from had logged into this directory.
    """
    atomic_write_text(run_dir / OPTIONS_FILE, json.dumps(options_record(cfg, run_dir), indent=2))
    remove_stale_temporaries(run_dir)
    stats = run_dir / "stats.jsonl"
    if not stats.exists():
        # A run resumed into a new directory starts its file empty.
        return 0
    # After a crash the log may hold ticks past the snapshot we resume from: drop them.
    kept, damaged = trim_jsonl(stats, stats_lines)
    if damaged:
        say(f"{damaged} damaged line(s) of {stats} set aside in {stats.name}.corrupt")
    return kept


class SampleGrid:
    """The fixed reals and latents of the sample grids: reals.png, and at each snapshot G_ema's
    fakes for the same latents (fakesNNNNNN.png) and both side by side (reals_and_fakes.png)."""

    def __init__(self, train_set: Any, z_dim: int, conditional: bool, seed: int) -> None:
        gw, gh = grid_shape(train_set.resolution, len(train_set))
        n = gw * gh
        idx = (torch.randperm(len(train_set), generator=torch.Generator().manual_seed(123)).tolist() * n)[:n]
        reals, labels = train_set.batch(idx)
        self.shape = (gw, gh)
        self.resolution = train_set.resolution
        self.reals = reals.numpy()
        self.z = torch.randn([n, z_dim], generator=torch.Generator().manual_seed(seed))
        self.c = labels if conditional else None
        self.reals_tile = tile(self.reals.transpose(0, 2, 3, 1), gw, gh)

    @torch.no_grad()
    def generate(self, G_ema: torch.nn.Module, device: torch.device, batch: int) -> torch.Tensor:
        out = []
        for i in range(0, len(self.z), batch):
            z = self.z[i : i + batch].to(device)
            c = None if self.c is None else self.c[i : i + batch].to(device)
            out.append(G_ema(z, c, noise_mode="const").cpu())
        return torch.cat(out)

    def save_reals(self, path: Path) -> None:
        save_grid(self.reals, path, *self.shape)

    def save_fakes(self, fakes: torch.Tensor, path: Path) -> None:
        """The fakes grid, and beside the reals the one picture that says whether training works."""
        save_grid(fakes, path, *self.shape)
        both = side_by_side(self.reals_tile, tile(to_uint8(fakes), *self.shape), self.resolution)
        save_png(both, path.parent / "reals_and_fakes.png")


def continued_run(overrides: dict[str, Any]) -> Path | None:
    """The run directory that `--resume` names, if it names one."""
    resume = overrides.get("resume")
    if resume is None or not str(resume).strip():  # an empty --resume= is refused by validation
        return None
    path = Path(resume).expanduser()
    return path if path.is_dir() else None


def canonical_data(spec: str) -> str:
    """--data as a run records it: a built-in name as it is, a path made absolute, so that the run
    can be continued from any working directory."""
    from ada import builtin

    return spec if not spec or builtin.is_builtin(spec) else str(Path(spec).expanduser().resolve())


def stored_options(run_dir: Path) -> dict[str, Any] | None:
    """The run's training_options.json, or None if it has none."""
    path = run_dir / OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({one_line(exc, 'whole')})") from None
    if not isinstance(stored, dict):
        raise UserError(f"{path}: not a JSON object of options")
    return stored


def stored_config(run_dir: Path) -> TrainConfig:
    """The configuration the run in `run_dir` was started (or last continued) with."""
    stored = stored_options(run_dir)
    source = str(run_dir / OPTIONS_FILE)
    if stored is None:
        snapshot = latest_snapshot(run_dir)
        if snapshot is None:
            raise UserError(
                f"--resume={run_dir}: not a run directory (no {OPTIONS_FILE}, no network-snapshot-*.pt)"
            )
        stored, source = load_checkpoint(snapshot)["config"], str(snapshot)
    stored = upgraded_record(stored)
    cfg = TrainConfig(cfg=str(stored.pop("cfg", "auto")))
    config.apply_overrides(cfg, stored, source=source)
    return cfg


def upgraded_record(stored: dict[str, Any]) -> dict[str, Any]:
    """A run's stored options in today's keys, meaning what they meant when the run started.

    Retired keys go. `aug.diffaug_policy` (every record had one, read only with --aug=diffaug)
    became `aug.diffaug`, which --aug=ada also reads; an older ADA run keeps no DiffAugment.
    """
    stored = {k: v for k, v in stored.items() if k not in _RETIRED_KEYS}
    aug = stored.get("aug")
    if isinstance(aug, dict) and "diffaug_policy" in aug:
        aug = dict(aug)
        policy = aug.pop("diffaug_policy")
        if aug.get("mode") == "diffaug":
            aug["diffaug"] = policy
        stored["aug"] = aug
    return stored


def _preset_id(spec: str) -> str:
    return str(Path(spec).expanduser().resolve()) if config.is_preset_file(spec) else spec


def _same(setting: config.Setting, given: Any, stored: Any) -> bool:
    if setting.key == "data":
        return canonical_data(str(given)) == stored
    try:
        return field_types.coerce(setting, given) == stored
    except ValueError:
        return False


def continue_config(run_dir: Path, preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """The run's stored configuration with the options the user may change on a continued run.

    `preset` is the --cfg the user gave (None: not given), already mapped for this machine.
    """
    cfg = stored_config(run_dir)
    snapshot = latest_snapshot(run_dir)
    fine_tune = (
        f"fine-tune into a new run with --resume={snapshot} and your flags"
        if snapshot is not None else "start a new run"
    )

    def refuse(what: str, was: str) -> None:
        raise UserError(
            f"{what} would change the run in {run_dir} (it was started with {was}); leave the flag out to "
            f"continue it as it was, or {fine_tune}"
        )

    if preset is not None and _preset_id(preset) != _preset_id(cfg.cfg):
        refuse(f"--cfg={preset}", f"--cfg={config.preset_label(cfg.cfg)}")
    given = config.flatten(overrides)
    allowed: dict[str, Any] = {}
    for key, value in given.items():
        setting = config.settings()[key]
        if key == "resume":
            continue
        if key == "outdir":
            if Path(value).expanduser().resolve() != run_dir.expanduser().resolve().parent:
                raise UserError(f"--outdir={value}: a continued run stays in {run_dir}; leave --outdir out")
            continue
        stored = config.get(cfg, key)
        if setting.option.defines_run and not _same(setting, value, stored):
            name = setting.option.flag or f"--set {key}"
            refuse(f"{name}={value}", f"{config.settings()[key].option.flag or key}={stored}")
        allowed[key] = value
    if "gpus" in allowed and "batch_gpu" not in allowed and cfg.batch_gpu:
        # Another GPU count splits the batch differently: keep the stored pass size where it still fits.
        if (cfg.batch // allowed["gpus"]) % cfg.batch_gpu:
            cfg.batch_gpu = None
    config.apply_overrides(cfg, config.nest(allowed), source="command line")
    cfg.resume = str(run_dir)
    return cfg


def options_record(cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """What training_options.json holds: the resolved configuration. A run continued in place keeps
    its record of what it started from (`resume`), not itself."""
    record = cfg.to_dict()
    if cfg.resume and Path(cfg.resume).expanduser().resolve() == run_dir.resolve():
        record["resume"] = (stored_options(run_dir) or {}).get("resume")
    return record


def summary(
    run_dir: Path, *, start_kimg: float, end_kimg: float, target_kimg: float, seconds: float,
    snapshot: Path | None, grid: Path | None, stop_signal: int | None, command: str,
) -> str:
    """The lines that end a run: how far it got, its last files, and how to use and continue them.

    `stop_signal`: the signal (SIGTERM, SIGINT) that stopped the run early, or None if it finished.
    """
    stopped = stop_signal is not None
    done = f"Stopped by {signal.Signals(stop_signal).name}" if stopped else "Finished"
    lines = [
        f"{done} at {end_kimg:g} kimg of {target_kimg:g} ({end_kimg - start_kimg:g} kimg trained in "
        f"{format_duration(seconds)}).",
    ]
    if snapshot is not None:
        lines.append(f"  final snapshot  {snapshot}")
    if grid is not None:
        lines.append(f"  sample grid     {grid}")
        if (run_dir / "reals_and_fakes.png").is_file():
            lines.append(f"  reals | fakes   {run_dir / 'reals_and_fakes.png'}")
    if snapshot is not None:
        out = run_dir / "generated"
        lines.append(f"  generate        ada generate --network {snapshot} --seeds 0-15 --outdir {out}")
    more = "" if stopped else f" --kimg {2 * target_kimg:g}"
    lines.append(f"  continue        {command} --resume {run_dir}{more}")
    return "\n".join(lines)
