"""fairjax.serve and report.html in a real browser: Debian's headless Chromium driven by selenium.

Skipped only when /usr/bin/chromium is absent outside CI; in CI (`CI` set) a missing browser fails.
Selenium is given the system chromedriver, so selenium-manager never downloads anything.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from serve_helpers import thread_server

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.slow

POSTING = ("Acme | Berlin | Senior Backend Engineer | ONSITE\n"
           "We want a competitive, ambitious leader who thrives on challenges. "
           "You are supportive of teammates.")
SCRIPT_POSTING = ('<script>alert(1)</script> A competitive role. <img src=x onerror="alert(2)"> '
                  '<b>bold?</b>')


def _require_browser() -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        msg = f"{CHROMIUM} / {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def driver():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="fairjax-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", "--window-size=1280,1600", f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    """uvicorn in a thread (the CLI itself is tested in test_serve.py), the swap-table rewriter."""
    from fairjax.serve.app import create_app
    from fairjax.serve.service import RewriterAdapter, Services

    with thread_server(create_app(Services(rewriter=RewriterAdapter.lexicon()))) as url:
        yield url


def _severe(drv) -> list[dict]:
    return [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def _submit(drv, url: str, text: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(url + "/")
    box = drv.find_element(By.ID, "posting")
    box.clear()
    box.send_keys(text)
    drv.find_element(By.ID, "check").click()
    WebDriverWait(drv, 30).until(EC.visibility_of_element_located((By.ID, "result")))
    WebDriverWait(drv, 30).until(lambda d: d.find_element(By.ID, "status").text == "done")
    return drv


def test_page_checks_a_pasted_posting(driver, server, tmp_path):
    from selenium.webdriver.common.by import By

    _submit(driver, server, POSTING)
    assert "coded" in driver.find_element(By.ID, "verdict").text
    marks = driver.find_elements(By.CSS_SELECTOR, "#highlighted mark.coded")
    masc = [m.text for m in marks if m.get_attribute("data-kind") == "masculine"]
    fem = [m.text for m in marks if m.get_attribute("data-kind") == "feminine"]
    assert masc == ["competitive", "ambitious", "leader", "challenges"] and fem == ["supportive"]
    assert driver.find_element(By.ID, "highlighted").text == POSTING
    ins = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#diff ins")]
    dels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#diff del")]
    assert "competitive" in dels and "collaborative" in ins
    table = driver.find_element(By.ID, "diversity").text
    assert "impact ratio" in table and "female" in table
    assert "diversity reward" in driver.find_element(By.ID, "before-after").text
    assert "demo candidates" in driver.find_element(By.ID, "pool-name").text
    shot = tmp_path / "page.png"
    driver.set_window_size(1280, 2600)  # the whole result, diff included
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("FAIRJAX_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["FAIRJAX_SCREENSHOT_DIR"]) / "serve_page.png")
    assert _severe(driver) == []  # no CSP violation, no script error


def test_script_posting_renders_as_text_without_alert(driver, server):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    _submit(driver, server, SCRIPT_POSTING)
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text
    shown = driver.find_element(By.ID, "highlighted")
    assert shown.text == SCRIPT_POSTING
    assert driver.find_elements(By.CSS_SELECTOR, "#highlighted script, #highlighted img, "
                                                 "#highlighted b, #diff script, #diff img") == []
    assert driver.execute_script("return window.__pwned === undefined")
    assert _severe(driver) == []


def test_file_upload_fills_the_table_with_progress(driver, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    f = tmp_path / "postings.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"p{i}", "text": t}) for i, t in enumerate(
        [POSTING, "A kind and supportive team.", SCRIPT_POSTING])) + "\n")
    driver.get(server + "/")
    driver.find_element(By.ID, "file").send_keys(str(f))
    driver.find_element(By.ID, "upload").click()
    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.ID, "progress-text").text == "done: 3 postings")
    rows = driver.find_elements(By.CSS_SELECTOR, "#batch-table tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == ["p0", "p1", "p2"]
    assert driver.find_element(By.ID, "progress").get_attribute("value") == "3"
    assert driver.find_element(By.ID, "download-csv").is_enabled()
    assert driver.find_element(By.ID, "download-jsonl").is_enabled()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{oops\n')
    driver.find_element(By.ID, "file").send_keys(str(bad))
    driver.find_element(By.ID, "upload").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "bad.jsonl:2" in driver.find_element(By.ID, "error").text


def test_report_html_opens_without_console_errors(driver, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from report_helpers import make_eval_dir

    from fairjax.eval.report_html import write_report_html

    out = make_eval_dir(tmp_path)
    path = write_report_html(out)
    driver.get_log("browser")  # drop what earlier tests left
    driver.get(Path(path).as_uri())
    assert "fairjax evaluation" in driver.title
    assert driver.find_elements(By.CSS_SELECTOR, "table.headline tr")
    assert driver.find_elements(By.CSS_SELECTOR, ".example mark.coded")
    assert driver.find_elements(By.CSS_SELECTOR, ".example del") and \
        driver.find_elements(By.CSS_SELECTOR, ".example ins")
    imgs = driver.find_elements(By.CSS_SELECTOR, "img.figure")
    assert imgs and all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text
    if os.environ.get("FAIRJAX_SCREENSHOT_DIR"):
        driver.save_screenshot(str(Path(os.environ["FAIRJAX_SCREENSHOT_DIR"]) / "report_html.png"))
    assert _severe(driver) == []
