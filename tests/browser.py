"""Open an HTML file in real headless Chromium (Debian package ``chromium``): screenshot it and report
which <img> elements decoded. Test helper only; no network, throwaway profile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=15000"]

# Marks every image after load; --dump-dom then shows each image's decoded width.
_PROBE = ("<script>window.addEventListener('load', function () {"
          "document.querySelectorAll('img').forEach(function (img, i) {"
          "img.setAttribute('data-natural-width', String(img.naturalWidth)); });"
          "document.body.setAttribute('data-probe', 'done'); });</script>")


def chromium() -> str | None:
    """Path of the chromium binary, or None if it is not installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(html_path: str, extra: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, "file://" + os.path.abspath(html_path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(html_path: str, png_path: str, width: int = 1400, height: int = 4000) -> None:
    """Write a PNG screenshot of ``html_path``; raises RuntimeError if Chromium writes none."""
    proc = _run(html_path, [f"--screenshot={png_path}", f"--window-size={width},{height}"])
    if not os.path.exists(png_path):
        raise RuntimeError(f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}")


def image_widths(html_path: str) -> list[int]:
    """naturalWidth of every <img> after the page loaded (0 = failed to decode), via a probe script added
    to a temporary copy of the page (the original file is not modified)."""
    with open(html_path) as fh:
        page = fh.read()
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.html")
        with open(probe, "w") as fh:
            fh.write(page.replace("</body>", _PROBE + "</body>"))
        proc = _run(probe, ["--dump-dom"])
    if 'data-probe="done"' not in proc.stdout:
        raise RuntimeError(f"page did not finish loading: {proc.stderr[-2000:]}")
    return [int(w) for w in re.findall(r'data-natural-width="(\d+)"', proc.stdout)]
