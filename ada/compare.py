"""``ada compare``: put finished or running training runs side by side, without wandb.

Reads what training writes into each run directory (``training_options.json``,
``stats.jsonl``, ``metric-*.jsonl``), prints one table row per run and draws one PNG with
p, r_t, r_v and a metric against kimg, one line per run.

Table columns: run, aug, target (ADA only), cfg (preset), resume (scratch or the checkpoint's
file name), best metric and the kimg where it was reached, final metric, final p (the last reported), mean r_t
over the last 10% of the run's kimg, sec/kimg (median over ticks after the first, which
includes start-up), kimg reached.

Run directories of the official stylegan2-ada-pytorch code read too: its training_options.json
(``ada_target``, ``augment_kwargs``, ``training_set_kwargs``, ``resume_pkl``), its stats.jsonl
(``Progress/kimg``, ``Progress/augment``, ``Loss/signs/real`` ... as {num, mean, std}) and its
metric files (kimg from the snapshot name).

Pure functions for tests and other tools: ``load_run``, ``run_identity``, ``summarize_run``,
``format_table``, ``comparison_figure``, ``plot_runs``, ``choose_metric``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import click

from ada.config import preset_label
from ada.errors import UserError
from ada.files import atomic_write, read_jsonl
from ada.rundir import stored_options
from ada.tracking import as_number, best_evaluation, dataset_name, metric_direction, starts_from_checkpoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The PNG is FIGURE_SIZE_IN * DPI pixels; fixed so that scripts and tests know its size.
FIGURE_SIZE_IN = (12.0, 8.0)
DPI = 100
FIGURE_SIZE_PX = (int(FIGURE_SIZE_IN[0] * DPI), int(FIGURE_SIZE_IN[1] * DPI))

# Mean r_t is taken over this last fraction of a run's kimg: the controller's settled state,
# not its climb from p = 0.
R_T_WINDOW = 0.1


# The official snapshot names give the kimg of an evaluation that records none.
_OFFICIAL_SNAPSHOT = re.compile(r"network-snapshot-(\d+)\.pkl$")
# Official stats.jsonl keys ({num, mean, std} each) -> the keys our trainer writes.
_OFFICIAL_STATS = {
    "Progress/tick": "tick", "Progress/kimg": "kimg", "Progress/augment": "p", "Loss/signs/real": "r_t",
    "Timing/sec_per_kimg": "sec_per_kimg", "Loss/G/loss": "loss_G", "Loss/D/loss": "loss_D",
}


@dataclass
class RunLog:
    """Everything ``ada compare`` reads from one run directory."""

    path: Path
    options: dict[str, Any]
    stats: list[dict[str, Any]]
    # metric file name ("fid50k_full") -> its evaluations in file order
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """kimg and a stats key at the ticks where that key has a value (nulls are left out)."""
        points = [(float(record["kimg"]), as_number(record.get(key))) for record in self.stats]
        present = [(kimg, value) for kimg, value in points if value is not None]
        return [kimg for kimg, _ in present], [value for _, value in present]

    def metric_keys(self) -> list[str]:
        """Every result key found in this run's metric files, e.g. 'pr50k3_full_precision'."""
        keys: set[str] = set()
        for evaluations in self.metrics.values():
            for record in evaluations:
                keys.update(k for k, v in record.get("results", {}).items() if as_number(v) is not None)
        return sorted(keys)

    def metric_series(self, key: str) -> list[tuple[float, float]]:
        """(kimg, value) of every evaluation that reported ``key``, in the order they were made."""
        points: list[tuple[float, float]] = []
        for evaluations in self.metrics.values():
            for record in evaluations:
                value = as_number(record.get("results", {}).get(key))
                kimg = _evaluation_kimg(record)
                if value is not None and kimg is not None:
                    points.append((kimg, value))
        return points


# ----------------------------------------------------------------------------- reading


def load_run(run_dir: Path | str) -> RunLog:
    """Read one run directory. UserError when it is not one or holds no tick yet.

    A missing training_options.json only empties the aug/target/cfg/resume columns.
    """
    path = Path(run_dir)
    hint = "pass run directories written by training, e.g. runs/00003-mydata-ada"
    if not path.exists():
        raise UserError(f"{path}: no such directory; {hint}")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run directory; {hint}")
    stats_path = path / "stats.jsonl"
    if not stats_path.is_file():
        raise UserError(f"{path} is not a run directory (it has no stats.jsonl); {hint}")
    stats = [_as_our_tick(record) for record in read_jsonl(stats_path, strict=True)]
    if not stats:
        raise UserError(f"{stats_path} holds no ticks yet; wait for the run's first tick or leave it out")
    for position, record in enumerate(stats, start=1):
        if as_number(record.get("kimg")) is None:
            raise UserError(
                f"{stats_path}: record {position} has no numeric 'kimg'; the file is not a training stats log"
            )

    options = stored_options(path) or {}

    metrics = {
        metric_path.stem.removeprefix("metric-"): read_metric_log(metric_path)
        for metric_path in sorted(path.glob("metric-*.jsonl"))
    }
    return RunLog(path=path, options=options, stats=stats, metrics=metrics)


def read_metric_log(path: Path) -> list[dict[str, Any]]:
    """The evaluations of a metric-NAME.jsonl; each one's "results" must map result keys to values."""
    records = read_jsonl(path, strict=True)
    for position, record in enumerate(records, start=1):
        if not isinstance(record.get("results", {}), dict):
            raise UserError(
                f"{path}: record {position} has 'results' that are not a JSON object; the file is damaged, "
                "remove or repair that line"
            )
    return records


def _evaluation_kimg(record: Mapping[str, Any]) -> float | None:
    kimg = as_number(record.get("kimg"))
    if kimg is None:
        official = _OFFICIAL_SNAPSHOT.search(str(record.get("snapshot_pkl", "")))
        kimg = float(official.group(1)) if official else None
    return kimg


def _as_our_tick(record: dict[str, Any]) -> dict[str, Any]:
    """A stats.jsonl record as our trainer writes it; an official one ({num, mean, std} per key) converted."""
    if "Progress/kimg" not in record:
        return record
    out: dict[str, Any] = {"timestamp": record.get("timestamp")}
    for official, ours in _OFFICIAL_STATS.items():
        value = record.get(official)
        out[ours] = value.get("mean") if isinstance(value, dict) else None
    return out


def run_identity(options: Mapping[str, Any]) -> dict[str, Any]:
    """What a run was: data, cfg (preset), aug (mode), target (ADA only) and resume (what it started from),
    from our training_options.json (a TrainConfig) or the official one. Missing values are None."""
    if "training_set_kwargs" in options or "augment_kwargs" in options or "ada_target" in options:
        mode = "ada" if "ada_target" in options else "fixed" if "augment_kwargs" in options else "noaug"
        data = options.get("training_set_kwargs")
        return {
            "data": data.get("path") if isinstance(data, dict) else None,
            "cfg": None,
            "aug": mode,
            "target": as_number(options.get("ada_target")),
            "resume": options.get("resume_pkl"),
        }
    aug = options.get("aug")
    aug = aug if isinstance(aug, dict) else {}
    cfg = options.get("cfg")
    return {
        "data": options.get("data"),
        "cfg": preset_label(cfg) if isinstance(cfg, str) else None,
        "aug": aug.get("mode"),
        "target": as_number(aug.get("target")) if aug.get("mode") == "ada" else None,
        "resume": options.get("resume"),
    }


def _as_runs(runs: Sequence[RunLog | Path | str]) -> list[RunLog]:
    return [run if isinstance(run, RunLog) else load_run(run) for run in runs]


def choose_metric(runs: Sequence[RunLog], metric: str | None = None) -> str | None:
    """The metric result key to report: ``metric`` if given, else the first FID-like key found.

    ``metric`` may be a result key ('pr50k3_full_recall') or a metric whose results hold one
    key ('fid50k_full'). None when no run has any metric yet and none was asked for.
    """
    keys = sorted({key for run in runs for key in run.metric_keys()})
    if metric is None:
        if not keys:
            return None
        ranked = sorted(keys, key=lambda k: (not k.startswith("fid"), metric_direction(k) is None, k))
        return ranked[0]
    if metric in keys:
        return metric
    files = {name: run.metrics[name] for run in runs for name in run.metrics}
    if metric in files:
        results = sorted({key for record in files[metric] for key in record.get("results", {})})
        raise UserError(f"--metric {metric} reports several results ({', '.join(results)}); pass one of them")
    available = ", ".join(keys) if keys else "none, no run has evaluated a metric yet"
    raise UserError(f"--metric {metric}: no run has this metric; available: {available}")


# ----------------------------------------------------------------------------- summary and table


def _last_number(records: Sequence[Mapping[str, Any]], key: str) -> float | None:
    for record in reversed(records):
        value = as_number(record.get(key))
        if value is not None:
            return value
    return None


def mean_over_last_fraction(
    kimg: Sequence[float], values: Sequence[float | None], fraction: float = R_T_WINDOW
) -> float | None:
    """Mean of the non-null values at kimg >= end - fraction * (end - start); None if there are none."""
    if not kimg:
        return None
    start, end = kimg[0], kimg[-1]
    threshold = end - fraction * (end - start)
    window = [v for k, v in zip(kimg, values, strict=True) if k >= threshold and v is not None]
    window = [v for v in window if not math.isnan(v)]
    return statistics.fmean(window) if window else None


def typical_sec_per_kimg(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Median sec/kimg over the ticks after the first (which pays for start-up), or the first alone."""
    values = [as_number(record.get("sec_per_kimg")) for record in records]
    later = [v for v in values[1:] if v is not None]
    if later:
        return statistics.median(later)
    return values[0] if values else None


def summarize_run(run: RunLog | Path | str, metric: str | None = None) -> dict[str, Any]:
    """One table row: the run's identity, its metric (best, where, final) and its ADA state.

    ``metric`` defaults to ``choose_metric([run])``. Missing values are None.
    """
    (log,) = _as_runs([run])
    key = metric if metric is not None else choose_metric([log])
    kimg = [float(record["kimg"]) for record in log.stats]
    r_t = [as_number(record.get("r_t")) for record in log.stats]
    points = log.metric_series(key) if key is not None else []
    best = best_evaluation(key, points) if key is not None else None
    identity = run_identity(log.options)
    resume = identity["resume"]
    return {
        "run": log.name,
        "path": str(log.path),
        "dataset": dataset_name(identity["data"]) if identity["data"] else None,
        "cfg": identity["cfg"],
        "aug": identity["aug"],
        "target": identity["target"],
        "resume": PurePath(str(resume)).name if starts_from_checkpoint(resume) else None,
        "metric": key,
        "best": best[1] if best else None,
        "best_kimg": best[0] if best else None,
        "final": points[-1][1] if points else None,
        "final_kimg": points[-1][0] if points else None,
        "p": _last_number(log.stats, "p"),
        "r_t_last10": mean_over_last_fraction(kimg, r_t),
        "sec_per_kimg": typical_sec_per_kimg(log.stats),
        "kimg": kimg[-1],
        "ticks": len(log.stats),
    }


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, spec) if spec else str(value)


def _fmt_kimg(value: float | None) -> str:
    """kimg to the image (three decimals), without trailing zeros: '48.032', '200', '0.096'."""
    return "-" if value is None else f"{value:.3f}".rstrip("0").rstrip(".")


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of ``summarize_run`` rows, columns aligned, one line per run."""
    metrics = {row.get("metric") for row in rows} - {None}
    metric = metrics.pop() if len(metrics) == 1 else "metric"
    columns: list[tuple[str, Callable[[Mapping[str, Any]], str]]] = [
        ("run", lambda r: _fmt(r["run"], "")),
        ("aug", lambda r: _fmt(r.get("aug"), "")),
        ("target", lambda r: _fmt(r.get("target") if r.get("aug") == "ada" else None, "g")),
        ("cfg", lambda r: _fmt(r.get("cfg"), "")),
        ("resume", lambda r: r.get("resume") or "scratch"),
        (f"best {metric}", lambda r: _fmt(r.get("best"), ".4g")),
        ("@kimg", lambda r: _fmt_kimg(r.get("best_kimg"))),
        (f"final {metric}", lambda r: _fmt(r.get("final"), ".4g")),
        ("p", lambda r: _fmt(r.get("p"), ".3f")),
        ("r_t last10%", lambda r: _fmt(r.get("r_t_last10"), ".3f")),
        ("sec/kimg", lambda r: _fmt(r.get("sec_per_kimg"), ".2f")),
        ("kimg", lambda r: _fmt_kimg(r.get("kimg"))),
    ]
    cells = [[title for title, _ in columns]] + [[cell(row) for _, cell in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for line in cells:
        first = line[0].ljust(widths[0])
        rest = [text.rjust(width) for text, width in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plot

_PANELS = (
    ("p", "augmentation probability p"),
    ("r_t", "r_t = E[sign(D(x_train))]"),
    ("r_v", "r_v (validation overfitting)"),
)


def _png_path(path: Path | str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the plot is written as PNG, give a file name ending in .png")
    return out


def comparison_figure(runs: Sequence[RunLog | Path | str], metric: str | None = None) -> Figure:
    """A 2x2 figure of p, r_t, r_v and ``metric`` against kimg, one line per run (labelled with its name).

    ``metric`` defaults to ``choose_metric(runs)``. The ADA target is drawn dashed on the r_t panel.
    """
    # matplotlib is imported here so that `ada --help` and training do not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    logs = _as_runs(runs)
    key = metric if metric is not None else choose_metric(logs)

    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True).ravel()
    has_data = [False] * 4
    for index, log in enumerate(logs):
        color = f"C{index % 10}"
        for panel, (stat, _) in enumerate(_PANELS):
            kimg, values = log.series(stat)
            has_data[panel] |= bool(values)
            axes[panel].plot(kimg, values, color=color, linewidth=1.2, label=log.name)
        target = run_identity(log.options)["target"]
        if target is not None:
            axes[1].axhline(target, color=color, linestyle="--", linewidth=0.8, alpha=0.7, label="_target")
        points = log.metric_series(key) if key is not None else []
        has_data[3] |= bool(points)
        axes[3].plot(
            [kimg for kimg, _ in points],
            [value for _, value in points],
            color=color,
            linewidth=1.2,
            marker="o",
            markersize=3,
            label=log.name,
        )

    titles = [title for _, title in _PANELS]
    if key is None:
        titles.append("metric")
    else:
        hint = {"min": " (lower is better)", "max": " (higher is better)"}.get(
            metric_direction(key) or "", ""
        )
        titles.append(f"{key}{hint}")
    for ax, title, filled in zip(axes, titles, has_data, strict=True):
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        if not filled:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.5")
    for ax in axes[2:]:
        ax.set_xlabel("kimg")
    axes[0].legend(fontsize="small", loc="best")
    return figure


def plot_runs(runs: Sequence[RunLog | Path | str], out_path: Path | str, metric: str | None = None) -> Path:
    """Write ``comparison_figure(runs, metric)`` as a PNG of FIGURE_SIZE_PX pixels; returns its path."""
    out = _png_path(out_path)
    figure = comparison_figure(runs, metric)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create its folder ({exc.strerror or exc})") from None
    atomic_write(out, lambda f: figure.savefig(f, format="png", dpi=DPI))
    return out


# ----------------------------------------------------------------------------- command


@click.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--metric",
    default=None,
    help="Metric result key to report, e.g. fid50k_full or pr50k3_full_recall. Default: the first FID found.",
)
@click.option(
    "--out",
    default="compare.png",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the plot (PNG).",
)
def compare(run_dirs: tuple[Path, ...], metric: str | None, out: Path) -> None:
    """Compare training runs: a table of results and a plot of p, r_t, r_v and a metric against kimg."""
    out = _png_path(out)
    runs = [load_run(run_dir) for run_dir in run_dirs]
    key = choose_metric(runs, metric)
    click.echo(format_table([summarize_run(run, key) for run in runs]))
    plot_runs(runs, out, key)
    click.echo(f"plot written to {out}")
