"""Experiment tracking in Weights & Biases, for comparing runs side by side.

(TensorBoard event files are the other tracker, in `ada.tfevents`; `Trackers` sends each
call to both.)

The training loop calls, on every rank (ranks other than 0 get a no-op tracker)::

    tracker = Tracker.create(project=..., entity=..., group=..., name=..., mode=...,
                             run_dir=run_dir, config=resolved_config, rank=rank)
    tracker.log_tick(stats)                  # each stats.jsonl record, as it is written
    tracker.log_metric(kimg, results)        # each metric evaluation: {"fid50k_full": 12.3}
    tracker.log_image(kimg, "fakes", path)   # reals.png, fakes_init.png, fakesNNNNNN.png
    tracker.finish(exit_code)                # once, at the end (also on failure, with 1)

or uses the tracker as a context manager, which calls ``finish`` (exit code 1 on an exception).

What lands in wandb:

- config: the resolved config flattened to dotted keys ("loss.r1_gamma"), so runs can be
  filtered on any option, plus "dataset" (the name of ``config["data"]``), "resumed"
  (whether training started from a checkpoint, to continue a run or to fine-tune) and "run_dir".
- history, all against ``kimg`` (every key uses it as its step metric): ``train/<key>`` for
  every numeric key of a tick record (loss_G, p, r_t, r_v, logit_*, sec_per_kimg, ...),
  ``metrics/<key>`` for every metric result, ``images/<key>`` for the sample grids.
- summary: besides the last value of every key, ``final/<key>`` and, for metrics with a
  direction (lower is better for fid*/kid*/ppl*, higher for is*/precision/recall),
  ``best/<key>`` and ``best/<key>_kimg``. It is kept current at each evaluation, so a run
  that dies still has it.

Tracking is off unless a project is given (argument or WANDB_PROJECT). Unset arguments fall
back to WANDB_ENTITY, WANDB_RUN_GROUP, WANDB_NAME, WANDB_MODE, WANDB_DIR, then to the defaults:
group = dataset name (runs on one dataset land side by side), name = run directory name,
mode = online, files under ``run_dir/wandb``.

Tracking must never stop training: wandb is imported only when a project is given, and every
wandb call is guarded. The first failure (wandb missing, bad mode, no API key, unreachable
server, a crashed wandb service) gives one ``TrackingWarning`` and the tracker turns itself
into a no-op for the rest of the run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any

from ada.errors import one_line

MODES = ("online", "offline", "disabled")
# Older spellings wandb still accepts for WANDB_MODE.
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}

# An unreachable server delays the start of training by at most this long.
INIT_TIMEOUT_S = 90.0
# Without an API key, wandb asks for one in an interactive terminal; do not wait forever for
# an answer from someone who started a long run in a terminal multiplexer and walked away.
LOGIN_TIMEOUT_S = 60.0
# Sample grids of large models are tens of megapixels; the browser shows no more than this.
MAX_IMAGE_SIDE = 2048

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class TrackingWarning(UserWarning):
    """Experiment tracking failed or is misconfigured; training goes on without it."""


def warn_tracking(message: str) -> None:
    warnings.warn(message, TrackingWarning, stacklevel=3)


def describe_error(exc: Exception) -> str:
    # wandb's messages span several lines; a warning should stay one line in the training log.
    return f"{type(exc).__name__}: {one_line(exc, 'whole')}"


# ----------------------------------------------------------------------------- pure helpers


def dataset_name(data: Any) -> str:
    """The short name of a dataset: the last path component without an archive suffix.

    '/data/ffhq-256x256.zip' -> 'ffhq-256x256', 'datasets/faces/' -> 'faces', 'mnist16' -> 'mnist16'.
    """
    if data is None:
        return "unknown"
    text = str(data).rstrip("/\\")
    base = PurePath(text).name or text
    for suffix in _ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=str)
    return str(value)


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings become dotted keys: {"loss": {"r1_gamma": 1}} -> {"loss.r1_gamma": 1}.

    wandb filters and groups runs by single keys; a nested section would be one opaque value.
    Leaves are made JSON-friendly (paths to strings, tuples to lists).
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = _jsonable(value)
    return flat


def starts_from_checkpoint(resume: Any) -> bool:
    """Whether a run starts from a checkpoint ('noresume' is the official spelling of none)."""
    return resume not in (None, "", "noresume")


def run_config(config: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The config wandb gets: the flattened resolved config plus the keys runs are compared by."""
    flat = flatten_config(config)
    flat.setdefault("dataset", dataset_name(config.get("data")))
    flat.setdefault("resumed", starts_from_checkpoint(config.get("resume")))
    flat.setdefault("run_dir", str(run_dir))
    return flat


def as_number(value: Any) -> float | None:
    """A JSON value as a float if it is a number (bools count as 0/1), else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def numeric_items(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a stats record; nulls, strings and nested values are dropped."""
    out: dict[str, float] = {}
    for key, value in record.items():
        number = as_number(value)
        if number is not None:
            out[key] = number
    return out


def metric_direction(key: str) -> str | None:
    """'min' when lower is better, 'max' when higher is better, None when there is no 'best'.

    Lower is better for FID, KID and PPL; higher for Inception Score, precision and recall.
    A spread (``*_std``) and unknown keys have no best value.
    """
    k = key.lower()
    if k.endswith("_std"):
        return None
    if "precision" in k or "recall" in k:
        return "max"
    if k.startswith(("fid", "kid", "ppl")):
        return "min"
    if k.startswith("is"):
        return "max"
    return None


def best_evaluation(key: str, evaluations: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """The best (kimg, value) among a metric's evaluations; the earliest wins a tie.

    None when the metric has no direction or no finite value (a diverged run can give NaN).
    """
    direction = metric_direction(key)
    finite = [(kimg, value) for kimg, value in evaluations if math.isfinite(value)]
    if direction is None or not finite:
        return None
    pick = min if direction == "min" else max
    return pick(finite, key=lambda e: e[1])


def metric_summary(history: Mapping[str, list[tuple[float, float]]]) -> dict[str, float]:
    """Summary entries from each metric key's (kimg, value) evaluations, in order.

    ``final/<key>`` is the last value; ``best/<key>`` and ``best/<key>_kimg`` where a best exists.
    """
    summary: dict[str, float] = {}
    for key, evaluations in history.items():
        if not evaluations:
            continue
        summary[f"final/{key}"] = evaluations[-1][1]
        best = best_evaluation(key, evaluations)
        if best is not None:
            summary[f"best/{key}_kimg"], summary[f"best/{key}"] = best
    return summary


# ----------------------------------------------------------------------------- trackers


class Tracker:
    """The no-op tracker; ``Tracker.create`` returns a wandb-backed one when tracking is on."""

    enabled = False

    @staticmethod
    def create(
        *,
        run_dir: Path,
        config: Mapping[str, Any],
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        mode: str | None = None,
        rank: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> Tracker:
        """A wandb tracker, or a no-op one when tracking is off, this is not rank 0, or wandb fails.

        ``env`` stands in for ``os.environ`` (tests). Never raises for a wandb problem: it warns once.
        """
        env = os.environ if env is None else env
        project = project or env.get("WANDB_PROJECT") or None
        if rank != 0 or not project:
            return Tracker()
        raw_mode = mode or env.get("WANDB_MODE") or "online"
        mode = _MODE_ALIASES.get(raw_mode.lower(), raw_mode.lower())
        if mode not in MODES:
            warn_tracking(
                f"wandb mode {raw_mode!r} is not one of {', '.join(MODES)}; "
                "wandb logging is off for this run, training goes on"
            )
            return Tracker()
        if mode == "disabled":
            return Tracker()
        run_dir = Path(run_dir)
        try:
            import wandb

            # Logging in first bounds the wait for an answer at wandb's interactive key prompt.
            if mode == "online" and not wandb.login(timeout=LOGIN_TIMEOUT_S, verify=False):
                warn_tracking(
                    "wandb login did not complete (no API key: set WANDB_API_KEY, run `wandb login` "
                    "or use mode offline); "
                    "wandb logging is off for this run, training goes on"
                )
                return Tracker()
            run = wandb.init(
                project=project,
                entity=entity or env.get("WANDB_ENTITY") or None,
                group=group or env.get("WANDB_RUN_GROUP") or dataset_name(config.get("data")),
                name=name or env.get("WANDB_NAME") or run_dir.name,
                mode=mode,
                dir=env.get("WANDB_DIR") or str(run_dir),
                job_type="train",
                config=run_config(config, run_dir),
                settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S),
            )
        except Exception as exc:
            warn_tracking(
                f"wandb could not start a run ({describe_error(exc)}); "
                "wandb logging is off for this run, training goes on"
            )
            return Tracker()
        tracker = WandbTracker(run)
        tracker._define_axes()
        return tracker

    def log_tick(self, stats: Mapping[str, Any]) -> None:
        """Log one tick record (a stats.jsonl line): every numeric key, against its kimg."""

    def log_metric(self, kimg: float, results: Mapping[str, Any]) -> None:
        """Log one metric evaluation's results dict and refresh best/final in the summary."""

    def log_image(self, kimg: float, key: str, path: Path) -> None:
        """Log an image file (a sample grid) under ``images/<key>``."""

    def finish(self, exit_code: int = 0) -> None:
        """Write the summary and close the run; later calls do nothing."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)


class Trackers(Tracker):
    """Several trackers as one (wandb and TensorBoard): each call goes to each of them."""

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers = list(trackers)

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return any(t.enabled for t in self.trackers)

    def log_tick(self, stats: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_tick(stats)

    def log_metric(self, kimg: float, results: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log_metric(kimg, results)

    def log_image(self, kimg: float, key: str, path: Path) -> None:
        for tracker in self.trackers:
            tracker.log_image(kimg, key, path)

    def finish(self, exit_code: int = 0) -> None:
        for tracker in self.trackers:
            tracker.finish(exit_code)


class WandbTracker(Tracker):
    """A tracker writing to one wandb run. Made by ``Tracker.create``; not meant to be built directly."""

    def __init__(self, run: Any) -> None:
        self._run = run
        self._history: dict[str, list[tuple[float, float]]] = {}

    @property
    def enabled(self) -> bool:  # type: ignore[override]
        return self._run is not None

    def _guard(self, what: str, call: Callable[[Any], None]) -> None:
        # The first failure switches tracking off: a wandb service that failed once usually
        # fails (or blocks) on every later call, and training must not pay for that.
        run = self._run
        if run is None:
            return
        try:
            call(run)
        except Exception as exc:
            self._run = None
            warn_tracking(
                f"wandb {what} failed ({describe_error(exc)}); "
                "wandb logging is off for the rest of this run, training goes on"
            )

    def _define_axes(self) -> None:
        def define(run: Any) -> None:
            run.define_metric("kimg")
            run.define_metric("*", step_metric="kimg")

        self._guard("define_metric", define)

    def log_tick(self, stats: Mapping[str, Any]) -> None:
        values = numeric_items(stats)
        kimg = values.pop("kimg", None)
        if kimg is None:
            return
        row: dict[str, Any] = {"kimg": kimg}
        row.update({f"train/{key}": value for key, value in values.items()})
        self._guard("log", lambda run: run.log(row))

    def log_metric(self, kimg: float, results: Mapping[str, Any]) -> None:
        values = numeric_items(results)
        if not values:
            return
        for key, value in values.items():
            self._history.setdefault(key, []).append((float(kimg), value))
        row: dict[str, Any] = {"kimg": float(kimg)}
        row.update({f"metrics/{key}": value for key, value in values.items()})
        summary = metric_summary(self._history)

        def log(run: Any) -> None:
            run.log(row)
            run.summary.update(summary)

        self._guard("log", log)

    def log_image(self, kimg: float, key: str, path: Path) -> None:
        def log(run: Any) -> None:
            import wandb
            from PIL import Image

            with Image.open(path) as opened:
                image = opened.copy()  # closing the file must not free the pixels wandb still needs
            if max(image.size) > MAX_IMAGE_SIDE:
                image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), Image.Resampling.LANCZOS)
            picture = wandb.Image(image, caption=f"{key} at {kimg:g} kimg")
            run.log({"kimg": float(kimg), f"images/{key}": picture})

        self._guard("image upload", log)

    def finish(self, exit_code: int = 0) -> None:
        summary = metric_summary(self._history)

        def close(run: Any) -> None:
            if summary:
                run.summary.update(summary)
            run.finish(exit_code=exit_code)

        self._guard("finish", close)
        self._run = None
