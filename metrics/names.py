"""Metric names: the official ones (fid50k_full, kid50k_full, pr50k3_full, is50k, ppl2_wend, ...) and
the same metrics at other sizes.

Grammar (N is a count: ``50k`` = 50,000, ``200`` = 200):

    fid{N}        FID, N generated images vs the first N real ones
    fid{N}_full   FID, N generated vs every real image
    kid{N}        KID (unbiased, 100 subsets of at most 1000), N generated vs N real
    kid{N}_full   KID, N generated vs up to 1,000,000 real (the official cap)
    pr{N}k{K}     precision/recall with K nearest neighbours, N (in thousands) generated vs N real;
    pr{N}_{K}     the same with N an exact count (pr200_3); both take _full (up to 200,000 real,
                  the official cap)
    is{N}         Inception Score over N generated images, 10 splits
    ppl[2]_{z|w}{full|end}[_{N}]
                  perceptual path length, interpolating in Z or W, t uniform ('full') or t = 0
                  ('end'), with 'ppl2' leaving the image uncropped and 'ppl' taking the official
                  face crop; N samples, 50k if omitted

With x-flipped training data (``evaluate(..., xflip=True)``, training with ``--mirror``), the legacy
fid{N}, kid{N} and pr{N} compare against every real image and its mirror image, and the _full metrics
against the images alone, as the official legacy and primary metrics do.

The official metric list is the subset fid50k_full, kid50k_full, pr50k3_full, ppl2_wend, is50k,
fid50k, kid50k, pr50k3, ppl_zfull, ppl_wfull, ppl_zend, ppl_wend, with the same meanings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KID_FULL_MAX_REAL = 1_000_000
PR_FULL_MAX_REAL = 200_000
DEFAULT_PPL_SAMPLES = 50_000

_COUNT = r"(\d+)(k?)"
_PATTERNS = {
    "fid": re.compile(rf"fid{_COUNT}(_full)?"),
    "kid": re.compile(rf"kid{_COUNT}(_full)?"),
    "pr": re.compile(r"pr(\d+)(?:(k)_?(\d+)|_(\d+))(_full)?"),
    "is": re.compile(rf"is{_COUNT}"),
    "ppl": re.compile(rf"ppl(2?)_([zw])(full|end)(?:_{_COUNT})?"),
}
VALID_FORMS = ("fid{N}[_full], kid{N}[_full], pr{N}k{K}[_full], pr{N}_{K}[_full], is{N}, "
               "ppl[2]_{z|w}{full|end}[_{N}] with N a count such as 50k or 200 (e.g. fid50k_full)")


@dataclass(frozen=True)
class MetricSpec:
    """One metric and every number that defines it."""

    name: str
    kind: str  # "fid", "kid", "pr", "is" or "ppl"
    num_gen: int
    max_real: int | None = 0  # real images used: None = all, 0 = none
    nhood_size: int = 3  # pr: K of the k-NN radii
    num_subsets: int = 100  # kid
    max_subset_size: int = 1000  # kid
    num_splits: int = 10  # is
    space: str = "w"  # ppl: "z" or "w"
    sampling: str = "end"  # ppl: "full" or "end"
    crop: bool = False  # ppl: official face crop
    epsilon: float = 1e-4  # ppl
    # The legacy metrics (fid{N}, kid{N}, pr{N}) compare against the real data as training saw it,
    # x-flips included; the _full ones and IS drop them, as the official metric_main does.
    keeps_xflips: bool = False

    @property
    def result_keys(self) -> tuple[str, ...]:
        """Keys of this metric's entries in the results dict, as the official code names them."""
        if self.kind == "pr":
            return (f"{self.name}_precision", f"{self.name}_recall")
        if self.kind == "is":
            return (f"{self.name}_mean", f"{self.name}_std")
        return (self.name,)

    @property
    def uses_features(self) -> bool:
        return self.kind != "ppl"


def _count(digits: str, thousands: str) -> int:
    return int(digits) * (1000 if thousands else 1)


def parse_metric_name(name: str) -> MetricSpec:
    """One metric name -> its spec; ValueError naming the bad name and the valid forms."""
    spec = _parse(name.strip())
    if spec is None:
        raise ValueError(f"unknown metric {name.strip()!r}: valid forms are {VALID_FORMS}")
    if spec.nhood_size < 1:
        raise ValueError(f"metric {spec.name!r} asks for {spec.nhood_size} neighbours; K must be at least 1")
    least = {"fid": 2, "kid": 2, "pr": spec.nhood_size + 1, "is": spec.num_splits, "ppl": 2}[spec.kind]
    if spec.num_gen < least:
        raise ValueError(f"metric {spec.name!r} is too small: it needs at least {least} samples")
    return spec


def _parse(name: str) -> MetricSpec | None:
    kind = name[:3] if name.startswith(("fid", "kid", "ppl")) else name[:2]
    pattern = _PATTERNS.get(kind)
    m = pattern.fullmatch(name) if pattern is not None else None
    if m is None:
        return None
    if kind in ("fid", "kid"):
        n = _count(m[1], m[2])
        full_cap = None if kind == "fid" else KID_FULL_MAX_REAL
        return MetricSpec(name, kind, num_gen=n, max_real=full_cap if m[3] else n, keeps_xflips=not m[3])
    if kind == "pr":
        n = _count(m[1], m[2] or "")
        k = int(m[3] or m[4])
        return MetricSpec(name, kind, num_gen=n, max_real=PR_FULL_MAX_REAL if m[5] else n, nhood_size=k,
                          keeps_xflips=not m[5])
    if kind == "is":
        return MetricSpec(name, kind, num_gen=_count(m[1], m[2]))
    n = _count(m[4], m[5]) if m[4] else DEFAULT_PPL_SAMPLES
    return MetricSpec(name, kind, num_gen=n, space=m[2], sampling=m[3], crop=not m[1])


def parse_metric_names(names: str | list[str] | tuple[str, ...]) -> list[MetricSpec]:
    """``"fid50k_full,kid50k_full"`` (or a list of names) -> specs, in order, without repeats.

    ``"none"`` (the official CLI's way of turning metrics off) and ``""`` give an empty list.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [item.strip() for item in items if item.strip()]
    if items == ["none"]:
        return []
    specs: dict[str, MetricSpec] = {}
    for item in items:
        spec = parse_metric_name(item)
        specs.setdefault(spec.name, spec)
    return list(specs.values())
