"""The placement page and /docs in a real headless browser (Debian's chromium, driven by
Selenium through chromium-driver): the page shows the pods and their models, a model
deployed while it is open appears on its own, and Swagger UI loads with no network.
A screenshot of the page is kept in the test's output folder."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from gateway.tools import launcher

from .conftest import EXAMPLE, ISVCS, wait_ready

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1400,900",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"not seen in {timeout:g} s: {what}"
        time.sleep(0.2)
    return found


def test_the_page_shows_pods_and_models_and_a_new_model_appears_live(
    deployment: launcher.Deployment,
    api: httpx.Client,
    browser: webdriver.Chrome,
    tmp_path: Path,
) -> None:
    browser.get(deployment.api_url + "/")
    assert browser.title == "ModelMesh Gateway: placement"
    pods = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "section.pod"), "the pods")
    assert {p.get_attribute("data-pod") for p in pods} == set(deployment.ports.pod_addresses)
    assert all("healthy" in p.find_element(By.CSS_SELECTOR, ".health").text for p in pods)
    seed = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-model^='sklearn-mnist__isvc-']"),
        "sklearn-mnist",
    )
    assert seed[0].find_element(By.CSS_SELECTOR, ".state").text == "LOADED"

    # deployed while the page is open: it appears on its own, LOADED, with its memory
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"]["name"] = "page-mnist"
    api.put(f"{ISVCS}/page-mnist", json=document).raise_for_status()
    try:
        wait_ready(api, "page-mnist")
        row = wait_for(
            lambda: [
                r
                for r in browser.find_elements(
                    By.CSS_SELECTOR, "tr[data-model^='page-mnist__isvc-']"
                )
                if r.find_element(By.CSS_SELECTOR, ".state").text == "LOADED"
            ],
            "page-mnist LOADED",
        )[0]
        assert row.find_elements(By.CSS_SELECTOR, "td")[2].text.endswith("MiB")
        summary = browser.find_element(By.ID, "summary").text
        assert (
            f"{len(deployment.ports.pods)} pods ({len(deployment.ports.pods)} healthy)" in summary
        )
        screenshot = tmp_path / "placement.png"
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
        print(f"screenshot of the placement page: {screenshot}")
    finally:
        api.delete(f"{ISVCS}/page-mnist")


def test_swagger_ui_at_docs_loads_without_a_cdn(
    deployment: launcher.Deployment, browser: webdriver.Chrome
) -> None:
    browser.get(deployment.api_url + "/docs")
    title = wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), "Swagger UI"
    )
    assert title[0].text.startswith("ModelMesh Gateway management API")
    page = httpx.get(deployment.api_url + "/docs", timeout=10).text
    assert "cdn" not in page.lower() and "/static-offline-docs/swagger-ui-bundle.js" in page
    operations = browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    assert any("/v1/placement" in op.text for op in operations)
