"""Console output for long runs: a progress bar for long passes and one tidy line per training tick.

``progress(...)`` wraps tqdm for passes that take minutes (metric feature extraction, dataset
conversion). It draws only on an interactive terminal: in a batch job or a log file a bar
turns into thousands of carriage-return fragments, so there it stays silent and simply passes
the items through. Callers on ranks other than 0 pass ``enabled=False``.

``format_tick(stats)`` turns one ``stats.jsonl`` record into the single console line the
training loop prints per tick.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from typing import IO, Any

from tqdm import tqdm


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool | None = None,
    file: IO[str] | None = None,
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
    )


def format_duration(seconds: float) -> str:
    """Seconds as a short human duration: '42s', '3m 05s', '2h 07m', '3d 04h'."""
    s = max(0, int(round(seconds)))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


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
    ``tick 12    kimg 48.0     3m 05s  sec/kimg 15.02  G 1.234  D 0.456  p 0.012  r_t 0.612  cpu 2.3G``.

    ``elapsed_s`` is the wall time since training started (the record alone does not know it).
    Fields that are null (no ADA, no validation set, no GPU) are left out rather than printed
    as 'None'; skipped optimiser steps are shown only when there were any, because then they matter.
    """
    parts = [f"tick {int(stats.get('tick', 0)):<5d}", f"kimg {float(stats.get('kimg', 0.0)):<8.1f}"]
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
