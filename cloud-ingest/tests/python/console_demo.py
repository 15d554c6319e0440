"""The web console against the running demo (`twinlake demo`), in Debian's Chromium: sign in
with the demo's token, see the fleet come online, open sensor-2, switch its LED and see the
reported value follow in the twin view, see its live temperature chart gain points; then a
read-only token made on the admin page is offered no controls, and a write forced from the
browser is refused by the API (403, shown as it came). Prints "console-demo: ok".

Usage: console_demo.py API_BASE TOKEN
"""

import json
import sys

from selenium.webdriver.common.by import By

import browser

base, token = sys.argv[1], sys.argv[2]
# The demo's CA is made at its first start; Chromium takes no CA file on its command line.
driver = browser.chromium(insecure_certs=True)


def wait(cond, what, secs=30):
    browser.wait(driver, cond, what, secs)


def sign_in(tok):
    driver.get(base + "/")
    wait(lambda: driver.find_element(By.ID, "token").is_displayed(), "the sign-in form")
    driver.find_element(By.ID, "token").send_keys(tok)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()


def reported():
    return json.loads(driver.find_element(By.ID, "reported").text or "{}")


def row(resource):
    return driver.find_element(By.CSS_SELECTOR, f"#resources tr[data-resource='{resource}']")


try:
    sign_in(token)
    online = lambda d: any(r.split("\t")[0].strip() == d and "online" in r for r in browser.rows(driver))
    wait(lambda: online("sensor-1") and online("sensor-2"), "the demo's fleet online")
    browser.check_page(driver, "demo-fleet")

    # sensor-2's LED (the demo toggles sensor-1's desired LED itself), switched live; the
    # device's input stream reports it and the twin view follows.
    # The fleet re-renders as the demo streams: find and click in one try, retried.
    wait(lambda: driver.find_element(By.LINK_TEXT, "sensor-2").click() or True, "a click on sensor-2")
    wait(lambda: driver.find_element(By.ID, "device-title").text == "demo/sensor-2", "the device page")
    wait(lambda: row("led"), "the device's resources")
    want = not reported().get("led", False)
    row("led").find_element(By.TAG_NAME, "input").send_keys(json.dumps(want))
    [b for b in row("led").find_elements(By.TAG_NAME, "button") if b.text == "Write"][0].click()
    wait(lambda: reported().get("led") is want, f"the reported LED to follow ({want})")

    # Its temperature, charted live from the resource stream.
    [b for b in row("temp").find_elements(By.TAG_NAME, "button") if b.text == "Chart"][0].click()
    chart = ".chart[data-resource='temp']"
    points = lambda: int(driver.find_element(By.CSS_SELECTOR, chart).get_attribute("data-points") or 0)
    wait(lambda: points() >= 1, "a first point")
    first = points()
    wait(lambda: points() >= first + 3, "the chart gaining points")
    browser.check_page(driver, "demo-device")

    # A read-only token for the demo's user, made on the admin page and shown once.
    driver.get(base + "/#/admin")
    wait(lambda: driver.find_element(By.ID, "tok-name").is_displayed(), "the admin page")
    driver.find_element(By.ID, "tok-name").send_keys("demo-read")
    driver.find_element(By.ID, "tok-user").send_keys("demo")
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait(lambda: driver.find_element(By.ID, "secret-value").text.startswith("tl_"), "the read token")
    read_token = driver.find_element(By.ID, "secret-value").text
    driver.find_element(By.ID, "signout").click()
    sign_in(read_token)
    wait(lambda: driver.find_element(By.ID, "who").text.endswith(": read"), "the read token's scopes")
    driver.get(base + "/#/device/demo/sensor-2")
    wait(lambda: driver.find_element(By.ID, "device-title").text == "demo/sensor-2", "the device page")
    wait(lambda: row("temp"), "the device's resources")
    controls = driver.execute_script(
        "return [...document.querySelectorAll('#device button, #device input, #device textarea')]"
        ".filter(e => e.offsetParent !== null).map(e => e.textContent || e.id)")
    assert all(c in ("Read", "Chart") for c in controls), f"a read token is offered {controls}"
    browser.forced_write_refused(driver, "desired-form")
    status = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/v3/users/demo/devices/sensor-2/resources/led', {method: 'POST', body: 'true',"
        " headers: {Authorization: 'Bearer ' + sessionStorage.getItem('twinlake-token')}})"
        ".then(r => done(r.status), e => done(String(e)));")
    assert status == 403, f"a forced live write with a read token: {status}"
    print("console-demo: ok")
finally:
    driver.quit()
