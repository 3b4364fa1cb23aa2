"""The web UI in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against a real
`inkmcp serve` whose GitHub is the stand-in: sign in through GitHub's authorize page, the dashboard, a key made
there working for a real MCP client over streamable HTTP (it deploys a site the dashboard then shows with its log),
revoking it, a phone-sized viewport, sign-out, and the old cookie refused afterwards; then the Credits section: the
monthly cap set by keyboard, Add credits through the Stripe stand-in's Checkout page, the balance after the webhook.

One browser for the module (chromedriver started by us and stopped by its PID). A screenshot of the dashboard is
written to the test's tmp dir, and also to $INKMCP_WEB_SCREENSHOTS when that is set (for a human to look at).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from inkmcp.github.standin import StandinGitHub
from tests.billing.stripe_standin import StripeStandIn
from tests.e2e import apps
from tests.github_support import unique_login
from tests.requirements import requires
from tests.support import ServerProc, call, git_repo, mcp_session, traversable_tmpdir
from tests.web.webclient import base

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    requires("chromium", os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK),
             f"{CHROMIUM} or {CHROMEDRIVER} is missing"),
    pytest.mark.slow,
]
PHONE = {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True}


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="inkmcp-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", f"--user-data-dir={profile}", "--no-first-run"):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver_pid = service.process.pid
    try:
        yield driver
    finally:
        driver.quit()  # closes the browser chromedriver started
        service.stop()
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            if service.process.poll() is None:  # still there: stop exactly the chromedriver we started
                os.kill(driver_pid, signal.SIGKILL)
                service.process.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: WebDriver, condition, timeout: float = 20):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, timeout).until(condition)


def tab_to(driver: WebDriver, element_id: str, limit: int = 15) -> list[str]:
    """Press Tab from the top of the page until `element_id` has the focus; the ids focused on the way."""
    driver.find_element(By.TAG_NAME, "body").click()
    seen: list[str] = []
    for _ in range(limit):
        driver.switch_to.active_element.send_keys(Keys.TAB)
        active = driver.switch_to.active_element
        seen.append(active.get_attribute("id") or active.tag_name)
        if seen[-1] == element_id:
            return seen
    raise AssertionError(f"Tab never reached #{element_id}; focus went {seen}")


def horizontal_overflow(driver: WebDriver) -> int:
    return int(driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth"))


async def test_sign_in_key_for_mcp_revoke_phone_and_sign_out(web_server: ServerProc, github_standin: StandinGitHub,
                                                             browser: WebDriver, tmp_path: Path) -> None:
    root = base(web_server)
    login = unique_login("erin")
    github_standin.add_user(login)

    # sign in: our home page → GitHub's authorize page → back to the dashboard
    browser.get(root + "/")
    browser.find_element(By.ID, "signin").click()
    wait(browser, EC.title_contains("Authorize"))
    assert browser.current_url.startswith(github_standin.url + "/login/oauth/authorize?")
    Select(browser.find_element(By.ID, "login")).select_by_value(login)
    browser.find_element(By.ID, "js-oauth-authorize-btn").click()
    wait(browser, EC.url_to_be(root + "/dashboard"))
    assert browser.find_element(By.ID, "login").text == login
    assert browser.find_element(By.TAG_NAME, "h1").text == "Dashboard"

    # create a key with the keyboard only: Tab reaches the label, then the button; Enter submits
    order = tab_to(browser, "label")
    assert order[-2:] == ["logout", "label"], order  # header controls first, then the key form
    browser.switch_to.active_element.send_keys("laptop")
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.get_attribute("id") == "create-key"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    key = wait(browser, EC.presence_of_element_located((By.ID, "new-key"))).get_attribute("value")
    assert key.startswith("dk_live_") and len(key) > 40
    rows = browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr")
    assert any(key[:14] in r.text and "laptop" in r.text for r in rows)
    browser.get(root + "/dashboard")  # shown once: the dashboard does not show it again
    assert not browser.find_elements(By.ID, "new-key") and key not in browser.page_source

    # the key works for MCP: a real client deploys a static site with it
    repos = traversable_tmpdir("inkmcp-web-repos-")
    project = f"site-{login}"
    try:
        repo = git_repo(repos / "site", apps.STATIC_SITE)
        async with mcp_session(web_server, key) as s:
            dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project, service_type="webapp_static")
            deadline = time.monotonic() + 120
            while not dep["done"] and time.monotonic() < deadline:
                dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "live", dep
    finally:
        shutil.rmtree(repos, ignore_errors=True)

    # the dashboard shows the project, its service (URL, mode, state), the deployment, and its log
    browser.get(root + "/dashboard")
    project_box = browser.find_element(By.XPATH, f"//article[h3[text()='{project}']]")
    service_row = project_box.find_element(By.CSS_SELECTOR, "table.services tbody tr")
    assert dep["url"] in service_row.text and "static" in service_row.text
    assert project_box.find_element(By.CSS_SELECTOR, ".deployments li").text.startswith("live")
    key_used = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr") if key[:14] in r.text)
    assert "never" not in key_used.text  # last used: just now, by the MCP client

    # a phone: nothing scrolls sideways at 375 px; screenshot for people to look at
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        browser.get(root + "/dashboard")
        assert browser.execute_script("return window.innerWidth") == 375
        assert horizontal_overflow(browser) <= 0, "the dashboard scrolls sideways at 375 px"
        shot = tmp_path / "dashboard-375.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.get(root + "/dashboard")
    desktop = tmp_path / "dashboard.png"
    browser.save_screenshot(str(desktop))
    if os.environ.get("INKMCP_WEB_SCREENSHOTS"):
        out = Path(os.environ["INKMCP_WEB_SCREENSHOTS"])
        shutil.copy(desktop, out / "dashboard.png")
        shutil.copy(shot, out / "dashboard-375.png")

    project_box = browser.find_element(By.XPATH, f"//article[h3[text()='{project}']]")
    project_box.find_element(By.LINK_TEXT, "build").click()
    wait(browser, EC.presence_of_element_located((By.CSS_SELECTOR, "pre.log")))
    assert f"{project}/web" in browser.find_element(By.TAG_NAME, "h1").text or project in browser.title
    assert browser.find_element(By.CSS_SELECTOR, "pre.log").text.strip()
    browser.get(root + "/dashboard")

    # revoke it on the dashboard: MCP calls with it stop working at once
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr") if key[:14] in r.text)
    row.find_element(By.TAG_NAME, "button").click()
    assert key[:14] in wait(browser, EC.presence_of_element_located((By.ID, "notice"))).text
    assert all(key[:14] not in r.text for r in browser.find_elements(By.CSS_SELECTOR, "#keys tbody tr"))
    with pytest.raises(Exception):  # noqa: B017 - the MCP client fails inside its task group (no status in it)
        async with mcp_session(web_server, key) as s:
            await call(s, "list_projects")
    r = httpx.post(root + "/mcp", headers={"Authorization": f"Bearer {key}"}, json={}, timeout=10)
    assert r.status_code == 401 and "revoked" in r.text

    # the GitHub token the sign-in obtained is stored (encrypted) but never shown; no key or token in the server log
    user_id = github_standin.state.user_by_login(login).id
    github_tokens = [t for t, uid in github_standin.state.tokens.items() if uid == user_id]
    assert github_tokens
    cookie = browser.get_cookie("inkmcp_session")
    server_log = web_server.log_path.read_text(errors="replace")
    for secret in (key, cookie["value"], *github_tokens):
        assert secret not in browser.page_source and secret not in server_log

    # sign out: back on the home page; the cookie from before no longer opens the dashboard
    assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Lax"
    browser.find_element(By.ID, "logout").click()
    wait(browser, EC.presence_of_element_located((By.ID, "signin")))
    assert browser.current_url == root + "/" and browser.get_cookie("inkmcp_session") is None
    browser.add_cookie({k: cookie[k] for k in ("name", "value", "path", "httpOnly", "sameSite")})
    browser.get(root + "/dashboard")
    assert browser.current_url == root + "/" and browser.find_elements(By.ID, "signin")


def figure_text(driver: WebDriver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


async def test_credits_cap_and_a_stripe_checkout_in_the_browser(web_server: ServerProc, github_standin: StandinGitHub,
                                                                 stripe_standin: StripeStandIn, browser: WebDriver,
                                                                 tmp_path: Path) -> None:
    """Sign in, see balance and cap, set the cap with the keyboard, Add credits -> the stand-in's Checkout page ->
    Pay -> back on the dashboard, where the balance grows once the signed webhook arrived."""
    root = base(web_server)
    login = unique_login("fay")
    github_standin.add_user(login)
    browser.get(root + "/")
    browser.delete_all_cookies()
    browser.get(root + "/")
    browser.find_element(By.ID, "signin").click()
    wait(browser, EC.title_contains("Authorize"))
    Select(browser.find_element(By.ID, "login")).select_by_value(login)
    browser.find_element(By.ID, "js-oauth-authorize-btn").click()
    wait(browser, EC.url_to_be(root + "/dashboard"))
    assert browser.find_element(By.ID, "login").text == login
    assert (figure_text(browser, "balance"), figure_text(browser, "cap"), figure_text(browser, "spent")) == (
        "5.00 EUR", "no cap", "0.00 EUR")

    # the cap, by keyboard: Tab reaches its field right after Add credits' field and button; Enter saves
    order = tab_to(browser, "cap-amount", limit=20)
    assert order[-3:] == ["amount", "add-credits", "cap-amount"], order
    browser.switch_to.active_element.send_keys("25")
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert wait(browser, EC.presence_of_element_located((By.ID, "notice"))).text == \
        "Monthly spend cap set to 25.00 EUR."
    assert figure_text(browser, "cap") == "25.00 EUR"

    # Add credits: 20.00 EUR -> Stripe's (the stand-in's) payment page, for this account
    amount = browser.find_element(By.ID, "amount")
    amount.clear()
    amount.send_keys("20")
    browser.find_element(By.ID, "add-credits").click()
    wait(browser, EC.url_contains(stripe_standin.base + "/c/pay/cs_test_"))
    sid = browser.current_url.rsplit("/", 1)[-1]
    assert stripe_standin.sessions[sid]["client_reference_id"] == login
    assert browser.find_element(By.ID, "amount").text == "20.00 EUR"
    browser.find_element(By.ID, "pay").click()
    wait(browser, EC.url_to_be(root + "/dashboard?topup=paid"))
    assert "Payment received by Stripe" in browser.find_element(By.ID, "notice").text
    browser.find_element(By.ID, "reload").send_keys(Keys.ENTER)  # the notice's Reload link, by keyboard
    wait(browser, EC.url_to_be(root + "/dashboard#credits"))
    deadline = time.monotonic() + 15
    while figure_text(browser, "balance") != "25.00 EUR" and time.monotonic() < deadline:
        time.sleep(0.2)
        browser.refresh()
    assert figure_text(browser, "balance") == "25.00 EUR"  # 5.00 starter + 20.00 paid, credited by the webhook
    assert figure_text(browser, "cap") == "25.00 EUR"
    assert stripe_standin.deliveries and stripe_standin.deliveries[-1][1] == 200

    # a phone: the Credits section does not scroll sideways either
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        browser.get(root + "/dashboard")
        assert horizontal_overflow(browser) <= 0, "the dashboard scrolls sideways at 375 px"
        browser.find_element(By.ID, "credits").screenshot(str(tmp_path / "credits-375.png"))
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.set_window_size(1280, 1100)
    try:
        browser.get(root + "/dashboard")
        shot = tmp_path / "dashboard-credits.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        browser.set_window_size(1280, 900)
    if os.environ.get("INKMCP_WEB_SCREENSHOTS"):
        out = Path(os.environ["INKMCP_WEB_SCREENSHOTS"])
        shutil.copy(shot, out / "dashboard-credits.png")
        shutil.copy(tmp_path / "credits-375.png", out / "dashboard-credits-375.png")
