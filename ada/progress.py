"""Console output for long runs: a progress bar for long passes and one tidy line per training tick.

``progress(...)`` wraps tqdm for passes that take minutes (metric feature extraction, dataset
conversion). It draws only on an interactive terminal: in a batch job or a log file a bar
turns into thousands of carriage-return fragments, so there it stays silent and simply passes
the items through. Callers on ranks other than 0 pass ``enabled=False``.

``format_tick(stats)`` turns one ``stats.jsonl`` record into the single console line the
training loop prints per tick; ``TickBar`` shows, on a terminal only, how the current tick is
getting on between those lines (kimg, images/s, time left in the tick and in the run).

``Progress`` counts where a run is (it is checkpointed); ``Tick`` and ``TickStats`` hold the
tick in progress.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import torch
from tqdm import tqdm

from metrics.evaluate import format_duration


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool | None = None,
    file: IO[str] | None = None,
    bar_format: str | None = None,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one, driven with ``.update(n)``, when it is None).

    ``enabled=None`` draws only when ``file`` (stderr by default) is a terminal; ``False`` never
    draws; ``True`` always draws. A silent bar still iterates and accepts ``update``/``close``,
    so callers need no branches.
    """
    stream = sys.stderr if file is None else file
    if enabled is None:
        isatty = getattr(stream, "isatty", None)
        enabled = bool(isatty and isatty())
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=stream,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
        bar_format=bar_format,
    )


# (stats key, label, format) in print order; a key that is missing or null is left out of the line.
_TICK_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("sec_per_kimg", "sec/kimg", "{:.2f}"),
    ("loss_G", "G", "{:.3f}"),
    ("loss_D", "D", "{:.3f}"),
    ("p", "p", "{:.3f}"),
    ("p_apa", "p_apa", "{:.3f}"),
    ("r_t", "r_t", "{:.3f}"),
    ("r_v", "r_v", "{:.3f}"),
    ("diversity", "div", "{:.2f}"),
    ("mem_cpu_gb", "cpu", "{:.1f}G"),
    ("mem_gpu_gb", "gpu", "{:.1f}G"),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def format_tick(stats: Mapping[str, Any], elapsed_s: float | None = None) -> str:
    """One console line for one tick record, e.g.
    ``tick 12    kimg 48.032    3m 05s  sec/kimg 15.02  G 1.234  D 0.456  p 0.012  r_t 0.612  cpu 2.3G``.

    ``elapsed_s`` is the wall time since training started (the record alone does not know it).
    Fields that are null (no ADA, no validation set, no GPU) are left out rather than printed
    as 'None'; skipped optimiser steps are shown only when there were any, because then they matter.
    """
    parts = [f"tick {int(stats.get('tick', 0)):<5d}", f"kimg {float(stats.get('kimg', 0.0)):<9.3f}"]
    if elapsed_s is not None:
        parts.append(f"{format_duration(elapsed_s):>7s}")
    for key, label, fmt in _TICK_FIELDS:
        value = _number(stats.get(key))
        if value is not None:
            parts.append(f"{label} {'nan' if math.isnan(value) else fmt.format(value)}")
    skipped = _number(stats.get("skipped_steps"))
    if skipped:
        parts.append(f"skipped {int(skipped)}")
    return "  ".join(parts)


class TickBar:
    """A progress bar within one training tick: `start` at the tick's first image, `update` after each
    step, `close` before the tick's line is printed. Draws only where `progress` would (a terminal,
    unless `enabled` says otherwise); silent, it costs nothing. Messages printed while it is drawn
    go through `hidden()`, which takes the bar off the line and puts it back."""

    def __init__(self, total_nimg: int, enabled: bool | None = None, file: IO[str] | None = None):
        self.total_nimg = total_nimg
        self.enabled = enabled
        self.file = file
        self._bar: tqdm | None = None
        self._tick = 0
        self._start_nimg = 0
        self._end_nimg = 0
        self._start_time = 0.0

    def start(self, tick: int, start_nimg: int, end_nimg: int) -> None:
        self.close()
        bar = progress(total=max(end_nimg - start_nimg, 1), desc=f"tick {tick}", unit="img",
                       enabled=self.enabled, file=self.file, bar_format="{desc}  {percentage:3.0f}%|{bar}|")
        if bar.disable:
            return
        self._tick = tick
        self._bar, self._start_nimg, self._end_nimg = bar, start_nimg, end_nimg
        self._start_time = time.monotonic()
        self._describe(start_nimg)

    def _describe(self, cur_nimg: int) -> None:
        assert self._bar is not None
        elapsed = time.monotonic() - self._start_time
        done = cur_nimg - self._start_nimg
        rate = done / elapsed if done and elapsed > 0 else None
        parts = [f"tick {self._tick}", f"kimg {cur_nimg / 1000:.3f}/{self.total_nimg / 1000:g}"]
        if rate is None:
            parts.append("-- img/s")
        else:
            parts += [
                f"{rate:.1f} img/s",
                f"tick ETA {format_duration(max(self._end_nimg - cur_nimg, 0) / rate)}",
                f"end ETA {format_duration(max(self.total_nimg - cur_nimg, 0) / rate)}",
            ]
        self._bar.set_description_str("  ".join(parts), refresh=False)

    def update(self, cur_nimg: int) -> None:
        if self._bar is None:
            return
        self._describe(cur_nimg)
        self._bar.update(min(cur_nimg, self._end_nimg) - self._start_nimg - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @contextlib.contextmanager
    def hidden(self) -> Iterator[None]:
        if self._bar is None:
            yield
            return
        self._bar.clear()
        try:
            yield
        finally:
            self._bar.refresh()


@dataclass
class Progress:
    """Where a run is: images and ticks done, minibatches drawn, steps skipped, stats.jsonl lines kept."""

    cur_nimg: int = 0
    cur_tick: int = 0
    batch_idx: int = 0
    tick_start_nimg: int = 0
    skipped_steps: int = 0
    stats_lines: int = 0


@dataclass
class TickStats:
    """Sums of the per-step losses over one tick, kept as tensors so no step waits for the device."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0) + value.detach().float()
        self.counts[key] = self.counts.get(key, 0) + 1

    def means(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        out = {}
        for key, total in self.sums.items():
            out[key] = float(reduce(total.reshape(1))) / self.counts[key]
        return out


@dataclass
class Tick:
    """The tick in progress: its loss sums, when it started, and the image count at which it ends."""

    stats: TickStats
    start_time: float
    end_nimg: int


def finite_or_none(value: Any) -> Any:
    """Non-finite floats become null: stats.jsonl stays strict JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def cpu_memory_gb() -> float:
    """The process's peak resident memory so far."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        return float("nan")
