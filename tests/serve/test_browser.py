"""The pages in a real browser: Debian's chromium, headless, driven by Selenium, against the real
server on loopback. A search, then a pairing review that changes one tag and exports; the test
reads the exported file, and saves a screenshot of each page. The review runs against a server
started with --api-token (the token given once as ?token=...), and a third test types the token
into the pages' token field after the server refused the page's calls.

chromium and chromedriver are installed by scripts/install_browser.sh if missing. Without them
(no apt, not root) the tests skip, unless EMIT_REQUIRE_BROWSER=1 (CI), where they fail.
EMIT_SCREENSHOTS=1 writes the screenshots to docs/images/ instead of the test's folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_helpers import API_TOKEN, LiveServer

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (dev extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WAIT = 60  # seconds; the CPU is shared with other jobs


def _missing_browser() -> str | None:
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    script = REPO / "scripts" / "install_browser.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1200)
    if done.returncode == 0 and shutil.which("chromium") and shutil.which("chromedriver"):
        return None
    why = done.stderr.strip()[-500:]
    return f"chromium/chromedriver are missing and {script.name} could not install them: {why}"


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    problem = _missing_browser()
    if problem:
        if os.environ.get("EMIT_REQUIRE_BROWSER") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--lang=en-US"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def screenshot(driver: webdriver.Chrome, name: str, tmp_path: Path) -> Path:
    folder = REPO / "docs" / "images" if os.environ.get("EMIT_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    # wait for web fonts (the CJK font) and images, so the picture shows what a person sees
    driver.execute_async_script("document.fonts.ready.then(() => arguments[arguments.length - 1]())")
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"))
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(800, min(int(height) + 200, 2600)))  # + the window's own bars
    path = folder / name
    assert driver.save_screenshot(str(path))
    return path


def test_search_page_shows_a_grid_of_thumbnails_with_scores(browser, live_server: LiveServer,
                                                            tmp_path: Path) -> None:
    browser.get(live_server.url + "/")
    query = browser.find_element(By.ID, "query")
    query.send_keys("   ")  # the server refuses it; the page says why
    browser.find_element(By.ID, "search-button").click()
    wait = WebDriverWait(browser, WAIT)
    wait.until(lambda d: "query is empty" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    query.clear()
    query.send_keys("a red circle")
    top = browser.find_element(By.ID, "top-k")
    top.clear()
    top.send_keys("8")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 8)
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    names = [c.get_attribute("data-name") for c in cards]
    assert sum(n.startswith("red") for n in names[:3]) >= 2
    scores = [c.find_element(By.CSS_SELECTOR, ".score").text for c in cards]
    cosine = httpx.get(live_server.url + "/info").json()["search"]["images"]["metric"] == "ip"
    assert all(s.startswith("cosine " if cosine else "distance ") for s in scores)
    values = [float(s.split()[1]) for s in scores]
    assert values == sorted(values, reverse=cosine)  # nearest first
    assert "8 images nearest to" in browser.find_element(By.ID, "status").text
    shot = screenshot(browser, "serve_search.png", tmp_path)
    assert shot.stat().st_size > 10_000
    # a Chinese query goes through the page and back unchanged (the server's answer names it)
    query.clear()
    query.send_keys("红色的圆形")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: "nearest to “红色的圆形”" in d.find_element(By.ID, "status").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#results .result")) == 8


def test_review_page_changes_one_tag_and_exports(browser, token_server: LiveServer, tmp_path: Path) -> None:
    live_server = token_server  # every call of the page needs the token: given once, in the address
    browser.get(live_server.url + f"/review?token={API_TOKEN}")
    wait = WebDriverWait(browser, WAIT)
    assert "token" not in browser.current_url  # taken out of the address bar (and the history)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#folders option"))  # the server's batches
    browser.find_element(By.ID, "folder").send_keys("batch1")
    browser.find_element(By.ID, "load-button").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".image-card"))
    cards = browser.find_elements(By.CSS_SELECTOR, ".image-card")
    proposals = {}
    for card in cards:
        key = (card.get_attribute("data-product"), int(card.get_attribute("data-index")))
        proposals[key] = card.find_element(By.CSS_SELECTOR, ".chip.selected").get_attribute("data-tag")
        assert "%" in card.find_element(By.CSS_SELECTOR, ".confidence").text

    # one click on another tag of the first image
    first = cards[0]
    pid, index = first.get_attribute("data-product"), int(first.get_attribute("data-index"))
    other = first.find_element(By.CSS_SELECTOR, ".chip:not(.selected)")
    new_tag = other.get_attribute("data-tag")
    other.click()
    selector = f'.image-card[data-product="{pid}"][data-index="{index}"]'
    changed = browser.find_element(By.CSS_SELECTOR, selector)
    assert "changed" in changed.get_attribute("class")
    assert changed.find_element(By.CSS_SELECTOR, ".chip.selected").get_attribute("data-tag") == new_tag
    assert "1 changed" in browser.find_element(By.ID, "batch-summary").text

    browser.find_element(By.ID, "export-button").click()
    wait.until(lambda d: d.find_elements(By.ID, "export-path"))
    path = Path(browser.find_element(By.ID, "export-path").text)
    assert path == live_server.export_dir / "batch1" / "final_json.json"
    written = json.loads(path.read_text(encoding="utf-8"))
    for (product_id, k), proposed in proposals.items():
        ((name, tag),) = written[product_id]["imgs_tags"][k].items()
        assert tag == (new_tag if (product_id, k) == (pid, index) else proposed), name
    # the page's download link gives the same file
    link = browser.find_element(By.ID, "download-link")
    assert link.is_displayed()
    fetch = "fetch(arguments[0]).then(r => r.json()).then(arguments[arguments.length - 1])"
    downloaded = browser.execute_async_script(fetch, link.get_attribute("href"))
    assert downloaded == written
    assert "exported" in browser.find_element(By.ID, "batch-summary").text
    shot = screenshot(browser, "serve_pairing.png", tmp_path)
    assert shot.stat().st_size > 10_000
    # a change after the export is flagged until it is exported again
    card = browser.find_element(By.CSS_SELECTOR, selector)
    card.find_element(By.CSS_SELECTOR, f'.chip[data-tag="{proposals[(pid, index)]}"]').click()
    assert "changed since the last export" in browser.find_element(By.ID, "batch-summary").text
    browser.find_element(By.ID, "export-button").click()
    wait.until(lambda d: d.find_element(By.ID, "batch-summary").text.endswith("exported"))
    back = json.loads(path.read_text(encoding="utf-8"))
    assert next(iter(back[pid]["imgs_tags"][index].values())) == proposals[(pid, index)]


def test_pages_ask_for_the_token_and_send_it(browser, token_server: LiveServer, tmp_path: Path) -> None:
    browser.get(token_server.url + "/")
    browser.execute_script("sessionStorage.clear()")  # as a new visitor, who has no token yet
    browser.get(token_server.url + "/")
    wait = WebDriverWait(browser, WAIT)
    form = browser.find_element(By.ID, "token-form")
    wait.until(lambda d: form.is_displayed())  # the page's first API call was refused
    assert "needs a token" in browser.find_element(By.ID, "token-message").text
    browser.find_element(By.ID, "token-input").send_keys("a-wrong-token-0123456789")
    browser.find_element(By.ID, "token-button").click()
    wait.until(lambda d: d.find_element(By.ID, "token-form").is_displayed()
               and "token is wrong" in d.find_element(By.ID, "token-message").text)
    field = browser.find_element(By.ID, "token-input")
    field.clear()
    field.send_keys(API_TOKEN)
    browser.find_element(By.ID, "token-button").click()
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    query = wait.until(lambda d: d.find_element(By.ID, "query"))
    query.send_keys("a red circle")
    browser.find_element(By.ID, "search-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == 12)
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    # the thumbnails came through the API with the token (an <img> alone could not send it)
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
    sources = browser.execute_script("return [...document.querySelectorAll('#results img')].map(i => i.src)")
    assert all(src.startswith("blob:") for src in sources)
    # without the header the server still refuses: the page, not the server, was given the token
    fetch = "fetch('/info').then(r => arguments[arguments.length - 1](r.status))"
    assert browser.execute_async_script(fetch) == 401
    assert httpx.get(token_server.url + "/info").status_code == 401
