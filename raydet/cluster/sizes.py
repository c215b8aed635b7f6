"""File sizes for people: the one format every raydet table uses. No Ray, no TensorFlow."""

from __future__ import annotations


def format_size(n: float | None) -> str:
    """Bytes -> decimal units (1 kB = 1,000 bytes) as report.md and ``raydet run`` print them; "-" for None."""
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n:.0f} B"
