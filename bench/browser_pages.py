"""Open a page in headless Chromium and time it: shared by the report benchmarks.

Reuses the browser tests' Chromium set-up (tests/browser_support.py), so the flags that
keep Chromium off the network are written once.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser_support import chromium, console_errors, missing, requested_urls  # noqa: E402

__all__ = ["chromium", "missing", "open_timed"]


def open_timed(driver, page: Path, ready_js: str, fragment: str = "") -> dict:
    """Open `page` from disk and wait until `ready_js` is true; the seconds it took (wall
    clock, and the page's own clock from navigation start), the requests that left disk
    and the console errors."""
    driver.get("about:blank")
    requested_urls(driver)
    console_errors(driver)
    started = time.perf_counter()
    driver.get(page.as_uri() + fragment)
    while not driver.execute_script(f"return Boolean({ready_js})"):
        if time.perf_counter() - started > 30:
            raise TimeoutError(f"{page}: not ready after 30 s")
        time.sleep(0.01)
    wall = time.perf_counter() - started
    in_page = driver.execute_script("return performance.now()") / 1000
    urls = requested_urls(driver)
    return {
        "wall_s": round(wall, 3),
        "page_clock_s": round(in_page, 3),
        "requests": len(urls),
        "network_requests": [url for url in urls if not url.startswith(("file:", "data:"))],
        "console_errors": console_errors(driver),
    }
