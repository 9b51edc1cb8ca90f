"""Both pages opened from disk in headless Chromium: what they show, that the gallery's
filters and pages work, that nothing asks the network, and a screenshot of each (in
test-artifacts/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from browser_support import chromium, console_errors, missing, requested_urls

if reason := missing():
    pytest.skip(reason, allow_module_level=True)

from report_support import make_finished_run, make_posters, write_part  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from poster_ray.config import ReportSettings  # noqa: E402
from poster_ray.layout import GalleryDir  # noqa: E402
from poster_ray.report import write_report  # noqa: E402
from poster_ray.report.gallery import read_predictions  # noqa: E402
from poster_ray.report.thumbnails import thumbnail_key, write_thumbnail_batch  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PAGE_SIZE = 5
ERROR = "UnidentifiedImageError: cannot identify image file"


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def open_page(driver, page: Path, fragment: str = "") -> None:
    """Open a page from disk with the request log emptied first."""
    driver.get("about:blank")
    requested_urls(driver)
    console_errors(driver)
    driver.get(page.as_uri() + fragment)


def assert_offline_and_clean(driver) -> None:
    urls = requested_urls(driver)
    assert urls, "the request log is empty: the check would prove nothing"
    assert [url for url in urls if not url.startswith(("file:", "data:"))] == []
    assert console_errors(driver) == []


def wait_loaded(driver, view_page: str) -> list:
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.body.dataset.loaded") == view_page
    )
    return driver.find_elements(By.CSS_SELECTOR, "#grid .card")


def screenshot(driver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(max(height, 600), 4000))
    assert driver.save_screenshot(str(ARTIFACTS / name))
    driver.set_window_size(1280, 1000)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> GalleryDir:
    """12 predictions (one an error row) in pages of 5, thumbnails made beforehand
    without Ray, as an earlier run would have (the Ray job is the integration tier's)."""
    root = tmp_path_factory.mktemp("gallery")
    posters = make_posters(root / "posters", 12)
    errors = [ERROR if i == 7 else "" for i in range(12)]
    write_part(root / "predictions", 0, posters, errors)
    gallery = GalleryDir(root / "predictions")
    ok = [path for path, error in zip(posters, errors, strict=True) if not error]
    thumbs = np.array([gallery.thumb(thumbnail_key(path)) for path in ok], dtype=object)
    write_thumbnail_batch({"path": np.array(ok, dtype=object), "thumb": thumbs}, gallery.root.uri)
    write_report(str(root / "predictions"), ReportSettings(page_size=PAGE_SIZE))
    return gallery


def test_gallery_pages_filters_and_errors_in_a_browser(browser, gallery):
    rows = read_predictions(gallery.root.parent, ["part-000000.parquet"])
    page = gallery.page.local_path
    open_page(browser, page)
    cards = wait_loaded(browser, "all/1")
    assert len(cards) == PAGE_SIZE
    assert all(card.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") != "0"
               for card in cards)  # fmt: skip
    assert_offline_and_clean(browser)
    screenshot(browser, "gallery.png")

    browser.find_element(By.ID, "next").click()
    browser.find_element(By.ID, "next").click()
    assert len(wait_loaded(browser, "all/3")) == 12 - 2 * PAGE_SIZE
    browser.find_element(By.ID, "next").click()  # past the last page: stays on it
    assert browser.find_element(By.ID, "position").text == "page 3 of 3 (12 posters)"

    genre = rows["top1_genre"][0]
    Select(browser.find_element(By.ID, "show")).select_by_visible_text(
        next(o.text for o in Select(browser.find_element(By.ID, "show")).options
             if o.text.startswith(genre + " "))
    )  # fmt: skip
    view = browser.execute_script("return document.getElementById('show').value")
    cards = wait_loaded(browser, f"{view}/1")
    expected = {i for i, above in zip(rows["id"], rows["above_threshold"], strict=True)
                if genre in above}  # fmt: skip
    assert {card.find_element(By.CLASS_NAME, "id").text for card in cards} == expected
    for card in cards:
        assert genre in [chip.text for chip in card.find_elements(By.CLASS_NAME, "chip")]

    Select(browser.find_element(By.ID, "order")).select_by_value("uncertain")
    cards = wait_loaded(browser, f"{view}-uncertain/1")
    assert {card.find_element(By.CLASS_NAME, "id").text for card in cards} == expected

    Select(browser.find_element(By.ID, "show")).select_by_value("errors")
    (card,) = wait_loaded(browser, "errors/1")
    assert card.find_element(By.CLASS_NAME, "id").text == "p00007"
    assert card.find_element(By.CLASS_NAME, "message").text == ERROR
    assert_offline_and_clean(browser)


def test_run_report_in_a_browser(browser, tmp_path):
    run = make_finished_run(tmp_path, test_posters=6)
    page = Path(write_report(str(run)).path)
    open_page(browser, page)
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    posters = browser.find_elements(By.CSS_SELECTOR, ".poster img")
    assert len(posters) == 12
    assert all(img.get_attribute("naturalWidth") != "0" for img in posters)
    assert browser.find_element(By.TAG_NAME, "h2").text == "Model comparison (test split)"
    assert_offline_and_clean(browser)
    screenshot(browser, "run_report.png")


def test_the_network_check_sees_a_request_that_would_leave_disk(browser, tmp_path):
    """The offline assertions above can fail: a page asking for an http image is seen,
    both in the request log and, blocked by the pages' policy, on the console."""
    from poster_ray.report.html import page

    leaky = tmp_path / "leaky.html"
    leaky.write_text(page("leaky", "<img src='http://192.0.2.1/poster.jpg'>"))
    open_page(browser, leaky)
    WebDriverWait(browser, 10).until(
        lambda d: d.execute_script("return document.readyState") == "complete"
    )
    assert "http://192.0.2.1/poster.jpg" in requested_urls(browser)
    assert any("Content Security Policy" in error for error in console_errors(browser))
