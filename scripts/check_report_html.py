"""Open a report.html in headless Chromium and check that its plots render.

Two checks: (1) the DOM Chromium builds (--dump-dom) holds the expected number of <img> elements whose
data: URIs decode to valid PNG images, and every image finished loading with a non-zero natural size
(checked by a script that writes the result into the DOM before it is dumped); (2) a full-page
screenshot is not blank (many non-white pixels, several colours). Exit status 0 when all pass.

    python scripts/check_report_html.py runs/x/report.html --screenshot shot.png [--min-images 3]

Chromium is /usr/bin/chromium (Debian: `apt-get install -y chromium`); it runs with a fresh profile, no
sandbox, no GPU and no network services.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  const p = document.createElement('p'); p.id = 'render-check';
  p.textContent = `images-loaded:${ok}/${imgs.length}`; document.body.appendChild(p);
});</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("chromium not found: apt-get install -y chromium")


def run_chromium(page: Path, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", *extra, page.resolve().as_uri()]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def check_dom(html_path: Path, min_images: int) -> list[str]:
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        probe_page = Path(tmp) / "probe.html"
        probe_page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
        dom = run_chromium(probe_page, "--dump-dom").stdout
    srcs = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', dom)
    if len(srcs) < min_images:
        problems.append(f"expected at least {min_images} embedded PNG images in the DOM, found {len(srcs)}")
    for i, b64 in enumerate(srcs):
        try:
            img = Image.open(io.BytesIO(base64.b64decode(b64)))
            img.verify()
        except Exception as e:  # PIL raises several types for undecodable data
            problems.append(f"image {i}: does not decode as an image ({type(e).__name__})")
            continue
        if img.format != "PNG" or min(img.size) < 50:
            problems.append(f"image {i}: not a plausible plot ({img.format}, {img.size})")
    m = re.search(r"images-loaded:(\d+)/(\d+)", dom)
    if not m or m.group(1) != m.group(2) or int(m.group(2)) != len(srcs):
        problems.append(f"Chromium did not load every image: {m.group(0) if m else 'no load report in the DOM'}")
    print(f"DOM: {len(srcs)} embedded PNGs; {m.group(0) if m else 'no load report'}")
    return problems


def check_screenshot(html_path: Path, out: Path) -> list[str]:
    run_chromium(html_path, f"--screenshot={out.resolve()}", "--window-size=1200,2400", "--hide-scrollbars")
    if not out.is_file():
        return ["Chromium wrote no screenshot"]
    img = Image.open(out).convert("RGB")
    small = img.resize((img.width // 4, img.height // 4))
    pixels = np.asarray(small).reshape(-1, 3).astype(int)
    non_white = float((pixels.sum(axis=1) < 720).mean())
    colours = len(np.unique(pixels, axis=0))
    print(f"screenshot {out}: {img.size}, {non_white:.1%} non-white, {colours} colours")
    problems = []
    if non_white < 0.03 or colours < 50:
        problems.append(f"screenshot looks blank ({non_white:.1%} non-white pixels, {colours} colours)")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--screenshot", type=Path, default=Path("report_screenshot.png"))
    ap.add_argument("--min-images", type=int, default=1)
    args = ap.parse_args()
    problems = check_dom(args.report, args.min_images) + check_screenshot(args.report, args.screenshot)
    for p in problems:
        print("FAIL:", p)
    print("OK: plots render" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
