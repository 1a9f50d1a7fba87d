"""The page of `clip serve`, driven as people use it: Selenium drives Debian's headless chromium against a real
`clip serve --model demo` on 127.0.0.1, uploads images, types labels (Chinese too) and reads the ranked labels
from the page; the answers equal the API's, labels are shown as text (never as HTML), the label file and the
exports work, and the search grid shows the store's thumbnails."""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="clip serve needs the serve extra: pip install '.[serve]'")
httpx = pytest.importorskip("httpx", reason="the service tests need httpx")
pytest.importorskip("selenium", reason="the page test drives chromium with Selenium: pip install selenium")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)"),
    pytest.mark.e2e, pytest.mark.slow,
]

from test_serve import start_server  # noqa: E402

from clipcli.demo import shapes  # noqa: E402

HOSTILE = '<img src=x onerror="document.title=\'owned\'">'


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("page")
    shapes.draw_pil("red", "circle", seed=1).save(folder / "red_circle.png")
    shapes.draw_pil("blue", "square", seed=2).save(folder / "blue_square.jpg", quality=95)
    return folder


@pytest.fixture(scope="module")
def store(drawn, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from clipcli.cli import app

    path = tmp_path_factory.mktemp("pagestore") / "page.store"
    result = CliRunner().invoke(app, ["embed", str(drawn), "--store", str(path), "-m", "demo", "-q"])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    process, url = start_server("--store", str(store))
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1200,900"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver, url, downloads
    finally:
        driver.quit()
        process.terminate()
        process.wait(30)


def wait(driver, condition, seconds: float = 60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page re-renders its records while a condition reads them: an element found a moment ago may be gone
    return WebDriverWait(driver, seconds, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,)).until(condition)


def open_page(driver, url):
    from selenium.webdriver.common.by import By

    driver.get(url + "/")
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")


def top_labels(driver) -> list[str]:
    # read in one script, so the list is one rendering of the page, never half of two
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.record .bars li:first-child .label'), e => e.innerText)")


def test_upload_type_labels_read_the_top_label(served, drawn):
    from selenium.webdriver.common.by import By

    driver, url, _ = served
    open_page(driver, url)
    driver.find_element(By.ID, "files").send_keys(f"{drawn / 'red_circle.png'}\n{drawn / 'blue_square.jpg'}")
    driver.find_element(By.ID, "labels").send_keys("blue square\nred circle\n红色的圆\n" + HOSTILE)
    wait(driver, lambda d: "2 image(s) classified" in d.find_element(By.ID, "status").text)
    assert top_labels(driver) == ["red circle", "blue square"]
    shown = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".record:first-child .bars .label")]
    assert sorted(shown) == sorted(["blue square", "red circle", "红色的圆", HOSTILE])  # the hostile label as text
    assert driver.title == "clip serve" and not driver.find_elements(By.CSS_SELECTOR, ".bars img")
    # the page's percentages are the API's scores for the same upload
    files = [("image", ("red_circle.png", (drawn / "red_circle.png").read_bytes()))]
    api = httpx.post(url + "/v1/classify", files=files,
                     data={"labels": f'blue square,red circle,红色的圆,"{HOSTILE.replace(chr(34), chr(34) * 2)}"'})
    best = api.json()["results"][0]["predictions"][0]
    score = driver.find_element(By.CSS_SELECTOR, ".record:first-child .bars li:first-child .score").text
    assert best["label"] == "red circle" and score == f"{100 * best['score']:.1f}%"


def test_labels_change_the_answers_and_exports(served, drawn):
    from selenium.webdriver.common.by import By

    driver, url, downloads = served
    open_page(driver, url)
    driver.find_element(By.ID, "files").send_keys(str(drawn / "blue_square.jpg"))
    box = driver.find_element(By.ID, "labels")
    box.send_keys("red circle")
    wait(driver, lambda d: top_labels(d) == ["red circle"])  # the only label
    box.send_keys("\nblue square")  # the answer follows the labels as they are typed
    wait(driver, lambda d: top_labels(d) == ["blue square"])
    driver.find_element(By.ID, "export-json").click()
    driver.find_element(By.ID, "export-csv").click()
    saved_json, saved_csv = downloads / "clip-results.json", downloads / "clip-results.csv"
    wait(driver, lambda d: saved_json.is_file() and saved_csv.is_file(), 20)
    time.sleep(0.2)  # chromium renames the finished download into place; give it a moment to close it
    document = json.loads(saved_json.read_text())
    assert document["labels"] == ["red circle", "blue square"]
    assert document["results"][0]["predictions"][0]["label"] == "blue square"
    rows = list(csv.DictReader(io.StringIO(saved_csv.read_text())))
    assert rows[0]["path"] == "blue_square.jpg" and rows[0]["rank"] == "1" and rows[0]["label"] == "blue square"


def test_search_box_shows_store_thumbnails(served):
    from selenium.webdriver.common.by import By

    driver, url, _ = served
    open_page(driver, url)
    assert driver.find_element(By.ID, "search").is_displayed()
    driver.find_element(By.ID, "query").send_keys("red circle\n")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid figure")) == 2)
    first = driver.find_element(By.CSS_SELECTOR, "#grid figure:first-child")
    assert first.find_element(By.TAG_NAME, "figcaption").text.endswith("red_circle.png")
    wait(driver, lambda d: d.execute_script(
        "const i = document.querySelector('#grid img'); return i.complete && i.naturalWidth > 0;"))


def test_label_file_and_the_other_switch(served, drawn, tmp_path):
    from selenium.webdriver.common.by import By

    driver, url, _ = served
    open_page(driver, url)
    labels = tmp_path / "labels.txt"
    labels.write_text("# shapes\nred circle\n蓝色方块\nblue square\n", encoding="utf-8")
    driver.find_element(By.ID, "files").send_keys(str(drawn / "red_circle.png"))
    driver.find_element(By.ID, "labelfile").send_keys(str(labels))
    wait(driver, lambda d: top_labels(d) == ["red circle"])
    assert driver.find_element(By.ID, "labels").get_property("value") == "red circle\n蓝色方块\nblue square"
    driver.find_element(By.ID, "threshold").send_keys("0")  # threshold 0: every image is "other"
    driver.find_element(By.ID, "other").click()
    wait(driver, lambda d: top_labels(d) == ["other"])
    assert driver.find_element(By.CSS_SELECTOR, ".record .bars li:first-child").get_attribute("class") == "is-other"
