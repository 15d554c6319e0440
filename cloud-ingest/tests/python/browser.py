"""What the console's browser tests share: Debian's Chromium driven by selenium through
Debian's chromedriver (nothing is downloaded), waiting on a changing page, and the checks
each page gets: a screenshot (into `target/console-screenshots/`, git-ignored), axe-core
(vendored, vendor/axe-core) with no serious or critical violation, and a Tab walk that
reaches every visible control."""

import os
import pathlib
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

HERE = pathlib.Path(__file__).resolve().parent
SHOTS = pathlib.Path(os.environ.get("TWINLAKE_SHOTS", HERE.parents[2] / "target" / "console-screenshots"))
AXE = (HERE / "vendor" / "axe-core" / "axe.min.js").read_text()
CONTROLS = "a[href], button, input, select, textarea, summary"


def chromium(insecure_certs=False):
    """Headless Chromium. `insecure_certs` for a server whose CA is made at run time (the
    demo's): Chromium takes no CA file on its command line."""
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]:
        opts.add_argument(a)
    opts.accept_insecure_certs = insecure_certs
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def wait(driver, cond, what, secs=20):
    end = time.time() + secs
    while time.time() < end:
        try:
            if cond():
                return
        except Exception:  # noqa: BLE001 - the page is still changing
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; page: {driver.find_element(By.TAG_NAME, 'body').text}")


# A control's identity that survives the page re-rendering it (the fleet is live).
KEY_JS = """
const key = (e) => {
  if (!e) return null;
  const row = e.closest('tr');
  return [e.tagName, e.id, e.name || '', e.getAttribute('href') || '', e.getAttribute('aria-label') || '',
          e.getAttribute('value') || '', (e.closest('form') || {}).id || '',
          (e.textContent || '').trim().slice(0, 40), row ? (row.cells[0] || {textContent: ''}).textContent.trim() : ''].join('|');
};
"""


def tab_walk(driver, page):
    """Tab from the top of the page until focus comes round: every visible, enabled
    control must have had it."""
    want = set(driver.execute_script(
        KEY_JS + "return [...document.querySelectorAll(arguments[0])]"
        ".filter(e => e.offsetParent !== null && e.checkVisibility() && !e.disabled).map(key);", CONTROLS))
    # From the first control (Chrome tabs on from where focus last was, even after a blur).
    driver.execute_script(
        "const first = [...document.querySelectorAll(arguments[0])].find(e => e.offsetParent !== null && e.checkVisibility() && !e.disabled);"
        "first.focus();", CONTROLS)
    seen = []
    for _ in range(len(want) * 2 + 10):
        k = driver.execute_script(KEY_JS + "return key(document.activeElement);")
        if seen and k == seen[0]:
            break  # round to the first control again
        seen.append(k)
        # To whatever has focus (a live list may have replaced the element meanwhile).
        ActionChains(driver).send_keys(Keys.TAB).perform()
    missed = sorted(want - set(seen))
    assert not missed, f"{page}: the Tab walk missed {missed}; went {seen}"


def check_page(driver, page):
    """The page's screenshot, its axe-core findings, its Tab walk."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{page}.png"))
    driver.execute_script(AXE)
    found = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']})"
        ".then(r => done(r.violations.map(v => [v.id, v.impact, v.nodes.map(n => n.html).slice(0, 3)])))"
        ".catch(e => done([['axe', 'critical', [String(e)]]]));"
    )
    bad = [v for v in found if v[1] in ("serious", "critical")]
    assert not bad, f"{page}: accessibility violations {bad}"
    tab_walk(driver, page)


def rows(driver):
    """The fleet's rows as text, read in one go: the live fleet may re-render between two
    element reads."""
    return driver.execute_script("return [...document.querySelectorAll('#devices tr')].map(r => r.innerText)")


def forced_write_refused(driver, form):
    """Shows a control form the token is not offered, submits it, and waits for the API's
    403 to be shown as it came."""
    driver.execute_script(
        "const f = document.getElementById(arguments[0]);"
        "f.style.display = 'block'; f.hidden = false; f.querySelector('button').click();", form)
    wait(driver, lambda: "403" in driver.find_element(By.ID, "error").text, f"the 403 for {form}")
