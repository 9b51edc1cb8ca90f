"""Both pages of a finished run, opened in headless Chromium: the README's screenshots.

    .venv/bin/python bench/report_pages.py runs/quick

Writes RUN/report/index.html and the gallery of RUN/predictions, opens each from disk,
checks that nothing asks the network and the console stays clean, times the first
paint of each, and saves screenshots: docs/report.png (its top), docs/report_posters.png
(the posters the last model gets most wrong) and docs/gallery.png (lowest confidence
first). Results: bench/results/report_pages.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

from browser_pages import chromium, missing, open_timed
from PIL import Image
from selenium.webdriver.common.by import By

from poster_ray.layout import RunDir
from poster_ray.report import write_report

READY = {
    "report": "document.readyState === 'complete'",
    "gallery": "document.body.dataset.loaded === 'all-uncertain/1'",
}
FRAGMENT = {"report": "", "gallery": "#show=all&order=uncertain&page=1"}


def save_small(png: bytes, out: Path) -> None:
    """A screenshot as a 128-colour PNG: a README picture, not a large binary."""
    with Image.open(io.BytesIO(png)) as shot:
        shot.convert("RGB").quantize(colors=128).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/report_pages.json"))
    args = parser.parse_args()
    if reason := missing():
        sys.exit(f"report_pages: {reason}")
    run = RunDir(args.run)
    written = {}
    for name, path in (("report", args.run), ("gallery", run.predictions.local_path)):
        started = time.perf_counter()
        page = write_report(str(path))
        written[name] = (page.local_path, round(time.perf_counter() - started, 1))
    results = {}
    with chromium() as driver:
        for name, (page, seconds) in written.items():
            opened = open_timed(driver, page, READY[name], FRAGMENT[name])
            results[name] = {"page": str(page), "write_s": seconds, **opened}
            driver.set_window_size(1280, 800)
            save_small(driver.get_screenshot_as_png(), args.docs / f"{name}.png")
            if name == "report":  # and the posters a model gets most wrong
                heading = driver.find_element(By.XPATH, "(//h3[contains(., 'most wrong')])[last()]")
                driver.execute_script("arguments[0].scrollIntoView()", heading)
                save_small(driver.get_screenshot_as_png(), args.docs / "report_posters.png")
            print(f"{name}: {json.dumps(results[name])}")
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} and the screenshots in {args.docs}/")


if __name__ == "__main__":
    main()
