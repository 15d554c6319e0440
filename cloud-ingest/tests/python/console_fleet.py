"""The console's fleet page with 10,000 devices, in Debian's Chromium: it loads, counts,
searches, filters and pages through them. Prints how long each step took (measured, not
asserted) and "fleet10k: ok".

Usage: console_fleet.py BASE_URL ADMIN_TOKEN DEVICES
"""

import sys
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

import browser

base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
driver = browser.chromium()


def text(id_):
    return driver.execute_script("return document.getElementById(arguments[0]).innerText", id_)


def rows():
    return browser.rows(driver)


def timed(cond, what, secs=60):
    t = time.time()
    end = t + secs
    while time.time() < end:
        try:
            if cond():
                print(f"{what}: {time.time() - t:.2f} s")
                return
        except Exception:  # noqa: BLE001 - the page is still changing
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; counts: {text('counts')}")


try:
    driver.get(base + "/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    timed(lambda: f"of {n} devices" in text("counts"), f"sign-in to {n} devices listed")
    assert 0 < len(rows()) <= 100, len(rows())
    last = f"dev-{n - 1:05}"
    driver.find_element(By.ID, "search").send_keys(last)
    timed(lambda: len(rows()) == 1 and last in rows()[0], "a search")
    driver.find_element(By.ID, "search").clear()
    driver.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    timed(lambda: text("counts").startswith(f"{n} shown"), "the search cleared")
    driver.find_element(By.ID, "search").send_keys("site=a")
    timed(lambda: text("counts").startswith(f"{n // 2} shown"), "a tag search")
    Select(driver.find_element(By.ID, "state")).select_by_value("online")
    timed(lambda: text("counts").startswith("0 shown"), "a state filter")
    Select(driver.find_element(By.ID, "state")).select_by_value("")
    timed(lambda: text("counts").startswith(f"{n // 2} shown"), "the filter cleared")
    driver.find_element(By.ID, "next").click()
    timed(lambda: text("page").startswith("page 2 of"), "the next page")
    print("fleet10k: ok")
finally:
    driver.quit()
