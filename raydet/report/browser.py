"""Headless Chromium, to look at report.html as a person would: a screenshot. No Ray, no TensorFlow; Chromium
is Debian's ``chromium`` package (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from raydet.errors import UserFileNotFoundError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 120


def find_chromium() -> str | None:
    """The Chromium executable on PATH (or /usr/bin/chromium), None when there is none."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _chromium(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise UserFileNotFoundError("no Chromium found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="raydet-chromium-") as profile:  # no shared profile lock
        cmd = [
            exe,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def screenshot(
    html_path: str | os.PathLike,
    png_path: str | os.PathLike,
    width: int = 1280,
    height: int = 2000,
    max_bytes: int | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Path:
    """Save the top ``width`` x ``height`` CSS pixels of the page as PNG at ``png_path``; with ``max_bytes``,
    shrink it (256 colours, then smaller) until it fits. Returns the path."""
    png = Path(png_path).absolute()
    png.parent.mkdir(parents=True, exist_ok=True)
    _chromium(
        [
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            Path(html_path).absolute().as_uri(),
        ],
        timeout_s,
    )
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot at {png}")
    if max_bytes is not None:
        shrink_png(png, max_bytes)
    return png


def shrink_png(path: Path, max_bytes: int) -> None:
    """Rewrite the PNG at ``path`` with a 256-colour palette, then at 0.8x the size per step, until it is at
    most ``max_bytes``."""

    with Image.open(path) as im:
        image = im.convert("RGB")
    scale = 1.0
    while True:
        size = (round(image.width * scale), round(image.height * scale))
        small = image.resize(size, Image.Resampling.LANCZOS) if scale < 1 else image
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= max_bytes or scale < 0.2:
            return
        scale *= 0.8
