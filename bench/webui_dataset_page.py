"""How long the web UI's Dataset page takes to open on a project of 500 clips.

    python bench/webui_dataset_page.py [--clips 500] [--size 256x144] [--frames 49] [--repeats 3]

Writes synthetic clips (the demo's moving squares) into a temporary project, starts `cinetune server` on a
free 127.0.0.1 port and measures, side by side:
  api cold   GET /api/projects/P/clips the first time (every clip probed with PyAV, the probe cache written)
  api warm   the same request again (probe facts from .cinetune/probe.json, captions read)
  page cold  headless Chromium, navigation to ?project=P&page=dataset: from the navigation's start to all clip
             cards in the page (grid rendered), and to the last poster of the first screen received (first
             screen complete); posters made on demand, first time
  page warm  the same navigation again (posters cached on disk; the browser cache is cleared each time)
Medians of --repeats runs for the warm figures. Needs /usr/bin/chromium for the page figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from tests.server.conftest import start_server, stop_server  # noqa: E402

from cinetune.demo import write_demo_dataset  # noqa: E402

# Cheap to poll: the cards are counted once the grid is in, and only the first 60 posters are looked at (a
# screen holds fewer), so polling does not lay out 500 cards every time.
READY = """n => performance.getEntriesByName('clips-rendered').length > 0 &&
  document.querySelectorAll('.clip').length === n &&
  [...document.querySelectorAll('.clip img')].slice(0, 60)
    .filter(i => i.getBoundingClientRect().top < innerHeight)
    .every(i => i.complete && i.naturalWidth > 0)"""


# In-page times from the navigation's start: the grid in the DOM (a performance mark app.js sets), and the
# last first-screen poster received (Resource Timing).
IN_PAGE = """() => {
  const rendered = performance.getEntriesByName('clips-rendered')[0].startTime;
  const shown = new Set([...document.querySelectorAll('.clip img')].slice(0, 60)
    .filter(i => i.getBoundingClientRect().top < innerHeight).map(i => i.src));
  const posters = performance.getEntriesByType('resource').filter(r => shown.has(r.name));
  return [rendered, Math.max(rendered, ...posters.map(r => r.responseEnd))];
}"""


def _page_load(page, url: str, clips: int) -> tuple[float, float, float]:
    """(grid rendered, first screen complete) in the page, and the wall time seen from here (which adds the
    polling of this script), seconds."""
    start = time.perf_counter()
    page.goto(url)
    page.wait_for_function(READY, arg=clips, timeout=120_000, polling=50)
    wall = time.perf_counter() - start
    rendered, complete = page.evaluate(IN_PAGE)
    return rendered / 1000, complete / 1000, wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--size", default="256x144")
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="webui-bench-"))
    root = tmp / "root"
    (root / "bench" / "config").mkdir(parents=True)
    shutil.copytree(
        ROOT / "src/cinetune/server/templates/ltxvideo-tiny-demo",
        root / "bench" / "config",
        dirs_exist_ok=True,
    )
    t0 = time.perf_counter()
    write_demo_dataset(root / "bench" / "datasets" / "clips", args.clips, args.frames, (width, height))
    print(
        f"{args.clips} clips {width}x{height}, {args.frames} frames written in "
        f"{time.perf_counter() - t0:.1f} s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    server = start_server(root)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            t = time.perf_counter()
            n = len(c.get("/api/projects/bench/clips").json()["clips"])
            cold = time.perf_counter() - t
            warm = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                c.get("/api/projects/bench/clips").raise_for_status()
                warm.append(time.perf_counter() - t)
        assert n == args.clips, n
        print(
            f"api   cold {cold:6.3f} s   warm {statistics.median(warm):6.3f} s   (GET .../clips, {n} clips)"
        )
        _browser(server.url, args)
    finally:
        stop_server(server)
        shutil.rmtree(tmp, ignore_errors=True)


def _browser(url: str, args: argparse.Namespace) -> None:
    if not Path("/usr/bin/chromium").exists():
        print("page  skipped: no /usr/bin/chromium")
        return
    from playwright.sync_api import sync_playwright
    from tests.server.test_browser import ARGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
        page = context.new_page()
        target = f"{url}/?project=bench&page=dataset"
        cold = _page_load(page, target, args.clips)
        warm = []
        for _ in range(args.repeats):
            cdp = context.new_cdp_session(page)
            cdp.send("Network.clearBrowserCache")
            warm.append(_page_load(page, target, args.clips))
        browser.close()
    labels = ("grid rendered", "first screen complete", "wall incl. polling")
    for n, label in enumerate(labels):
        print(
            f"page  cold {cold[n]:6.3f} s   warm {statistics.median(w[n] for w in warm):6.3f} s   ({label})"
        )


if __name__ == "__main__":
    main()
