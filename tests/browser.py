"""Open an HTML file in real headless Chromium (Debian package ``chromium``): screenshot it, report which
<img> elements decoded, and measure the laid-out page at a given window width. Test helper only; no network,
throwaway profile."""

from __future__ import annotations

import html
import json
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


def _dump_with(html_path: str, probe_script: str, extra: list[str] = ()) -> str:
    """The DOM after load of a temporary copy of ``html_path`` with ``probe_script`` added before </body>
    (the original file is not modified)."""
    with open(html_path) as fh:
        page = fh.read()
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.html")
        with open(probe, "w") as fh:
            fh.write(page.replace("</body>", probe_script + "</body>"))
        proc = _run(probe, ["--dump-dom", *extra])
    if 'data-probe="done"' not in proc.stdout:
        raise RuntimeError(f"page did not finish loading: {proc.stderr[-2000:]}")
    return proc.stdout


def image_widths(html_path: str) -> list[int]:
    """naturalWidth of every <img> after the page loaded (0 = failed to decode), via a probe script."""
    dom = _dump_with(html_path, _PROBE)
    return [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]


# After load: the viewport width, the page's scroll width, each table's own and its container's widths (and
# its right edge), every image's naturalWidth and alt, and the order of the page's top-level elements.
_LAYOUT_PROBE = """<script>window.addEventListener('load', function () {
  var vw = document.documentElement.clientWidth;
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    var box = t.parentElement, section = t.closest('section');
    return {section: section ? section.id : '', boxScrollWidth: box.scrollWidth, boxClientWidth: box.clientWidth,
            tableWidth: t.scrollWidth, right: t.getBoundingClientRect().right};
  });
  var images = Array.prototype.map.call(document.images, function (img) {
    return {naturalWidth: img.naturalWidth, alt: img.getAttribute('alt') || '',
            right: img.getBoundingClientRect().right};
  });
  var top = Array.prototype.map.call(document.body.children, function (e) {
    return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '');
  });
  var result = {viewport: vw, pageScrollWidth: document.documentElement.scrollWidth, tables: tables,
                images: images, top: top};
  document.body.setAttribute('data-layout', JSON.stringify(result));
  document.body.setAttribute('data-probe', 'done');
});</script>"""


def layout(html_path: str, width: int = 1280, height: int = 900) -> dict:
    """Lay the page out in a ``width`` x ``height`` window and measure it (see _LAYOUT_PROBE): a dict with
    ``viewport``, ``pageScrollWidth``, ``tables`` (section, boxScrollWidth, boxClientWidth, tableWidth,
    right), ``images`` (naturalWidth, alt, right) and ``top`` (tag#id of each child of <body>, in order)."""
    dom = _dump_with(html_path, _LAYOUT_PROBE, [f"--window-size={width},{height}"])
    found = re.search(r'data-layout="([^"]*)"', dom)
    if not found:
        raise RuntimeError("the layout probe left no result")
    return json.loads(html.unescape(found.group(1)))
