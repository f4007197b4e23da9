"""Interleaved bare/ergate pairs: what turns one noisy run into a median and a spread.

A paired measure takes, for each of its pairs, one sample of each side back to back, the side
that goes first alternating from pair to pair; each pair gives a ratio (ergate / bare). On a
shared machine the load drifts by tens of percent within minutes: both samples of a pair see
about the same load, so the ratios of the pairs vary far less than the absolute values do. The
measure reports the median ratio, the ratios' range (min-max) and interquartile range, and the
median absolute value of each side.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

SIDES = ("bare", "ergate")


def order(pair: int) -> tuple[str, str]:
    """Which side goes first in pair number `pair`: bare in even pairs, ergate in odd ones."""
    return SIDES if pair % 2 == 0 else (SIDES[1], SIDES[0])


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles (inclusive method; the values themselves when < 2)."""
    if len(values) < 2:
        return (values[0], values[0])
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q1, q3)


def summary(
    bare: Sequence[float], ergate: Sequence[float], unit: str, better: str, **detail: Any
) -> dict[str, Any]:
    """One measure from the samples of its pairs (`bare[i]` and `ergate[i]` are pair i)."""
    ratios = [e / b for b, e in zip(bare, ergate, strict=True) if b]
    return {
        "bare": statistics.median(bare),
        "ergate": statistics.median(ergate),
        "ratio": statistics.median(ratios) if ratios else None,
        "ratio_min": min(ratios) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
        "ratio_iqr": list(quartiles(ratios)) if ratios else None,
        "pairs": len(ratios),
        "unit": unit,
        "better": better,
        "detail": {"bare_by_pair": list(bare), "ergate_by_pair": list(ergate), **detail},
    }


def single(bare: float, ergate: float, unit: str, better: str, **detail: Any) -> dict[str, Any]:
    """A measure taken once (bytes per hop, memory): no pairs, no spread."""
    return {
        "bare": bare,
        "ergate": ergate,
        "ratio": ergate / bare if bare else None,
        "ratio_min": None,
        "ratio_max": None,
        "ratio_iqr": None,
        "pairs": 1,
        "unit": unit,
        "better": better,
        "detail": detail,
    }


def run_pairs(
    pairs: int, sample: Mapping[str, Callable[[], Any]], log: Callable[[str], None] | None = None
) -> dict[str, list[Any]]:
    """Call `sample[side]()` for both sides in `pairs` interleaved pairs; the samples by side.

    Sides other than bare and ergate (a reference) go right after bare, whatever the order.
    """
    extra = [side for side in sample if side not in SIDES]
    samples: dict[str, list[Any]] = {side: [] for side in sample}
    for pair in range(pairs):
        for side in order(pair):
            samples[side].append(sample[side]())
            if side == "bare":
                for other in extra:
                    samples[other].append(sample[other]())
        if log is not None:
            log(f"pair {pair + 1}/{pairs}")
    return samples
