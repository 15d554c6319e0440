"""The web console in a real Chromium (Debian's, driven by selenium through Debian's
chromedriver: nothing is downloaded). Signs in with a token, sees the fleet, searches it,
renders a hostile tag as text, keeps the token in sessionStorage only, survives a refresh,
and shows the API's 401 for a wrong token. On each page: a screenshot (into
`target/console-screenshots/`, git-ignored), axe-core (vendored, vendor/axe-core) finds no
serious or critical accessibility violation, and a Tab walk reaches every visible control.
Prints "console: ok".

Usage: console.py BASE_URL ADMIN_TOKEN READ_TOKEN
"""

import sys
import urllib.error
import urllib.request

from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

import browser

base, token, read_token = sys.argv[1], sys.argv[2], sys.argv[3]

# The page and its assets carry the policy.
with urllib.request.urlopen(base + "/") as r:
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"

driver = browser.chromium()


def wait(cond, what, secs=20):
    browser.wait(driver, cond, what, secs)


def check_page(page):
    browser.check_page(driver, page)


def rows():
    return browser.rows(driver)


try:
    driver.get(base + "/")
    check_page("signin")
    driver.find_element(By.ID, "token").send_keys("wrong-token")
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait(lambda: "401" in driver.find_element(By.ID, "error").text, "the 401")

    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait(lambda: len(rows()) >= 3, "the fleet")
    check_page("fleet")
    assert any("sensor-a" in r for r in rows()), rows()
    # The hostile tag is text, not markup: no image element, no script ran.
    assert any("<img src=x onerror=" in r for r in rows()), rows()
    # So is the hostile name, in the list and on the device's page; no dialog opened.
    assert any("evil <img src=x onerror=\"alert('pwned')\">" in r for r in rows()), rows()
    assert not driver.find_elements(By.CSS_SELECTOR, "#devices img")
    assert driver.title == "Twinlake", driver.title
    driver.get(base + "/#/device/acme/evil")
    wait(lambda: driver.find_element(By.ID, "device-name").text.startswith("<img src=x"), "the hostile name as text")
    assert not driver.find_elements(By.CSS_SELECTOR, "#device img")
    try:
        driver.switch_to.alert
        raise AssertionError("the hostile name opened a dialog")
    except NoAlertPresentException:
        pass
    driver.get(base + "/#/")
    wait(lambda: len(rows()) >= 3, "the fleet again")
    # The token is in this tab's sessionStorage only, and not in the URL.
    assert driver.execute_script("return sessionStorage.getItem('twinlake-token')") == token
    assert driver.execute_script("return localStorage.length") == 0
    assert token not in driver.current_url
    # Search narrows the list.
    driver.find_element(By.ID, "search").send_keys("sensor-b")
    wait(lambda: len(rows()) == 1 and "sensor-b" in rows()[0], "the search")
    # A refresh keeps the session.
    driver.refresh()
    wait(lambda: len(rows()) >= 3, "the fleet after a refresh")
    # A device's page: its twin, and desired state edited with If-Match.
    wait(lambda: driver.find_element(By.LINK_TEXT, "sensor-b").click() or True, "a click on sensor-b")
    wait(lambda: driver.find_element(By.ID, "device-title").text.endswith("/sensor-b"), "the device page")
    version = int(driver.find_element(By.ID, "version").text)
    edit = driver.find_element(By.ID, "desired-edit")
    edit.clear()
    edit.send_keys('{"led": true}')
    driver.find_element(By.CSS_SELECTOR, "#desired-form button").click()
    wait(lambda: '"led": true' in driver.find_element(By.ID, "desired").text, "the saved desired state")
    assert int(driver.find_element(By.ID, "version").text) > version
    assert '"led": true' in driver.find_element(By.ID, "delta").text, "the device has not reported it yet"
    # A property set as JSON, listed, then deleted.
    driver.find_element(By.ID, "prop-name").send_keys("calibration")
    driver.find_element(By.ID, "prop-value").send_keys('{"offset": 0.5}')
    driver.find_element(By.CSS_SELECTOR, "#property-form button").click()
    prop_rows = lambda: [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#properties tr")]
    wait(lambda: any("calibration" in r and '"offset":0.5' in r for r in prop_rows()), "the property")
    [r for r in driver.find_elements(By.CSS_SELECTOR, "#properties tr") if "calibration" in r.text][0].find_element(By.TAG_NAME, "button").click()
    wait(lambda: not prop_rows(), "the deleted property")
    # The user's endpoint, called with a payload (the test's receiver checks it arrived).
    wait(lambda: "console-hook" in driver.find_element(By.ID, "endpoints").text, "the endpoint list")
    payload = driver.find_element(By.ID, "endpoint-payload")
    payload.clear()
    payload.send_keys('{"from": "console"}')
    driver.find_element(By.CSS_SELECTOR, "#endpoints button").click()
    wait(lambda: driver.find_element(By.CSS_SELECTOR, "#endpoints td:last-child").get_attribute("data-called") == "queued", "the call")
    # A connected device's resources: read an output, write an input.
    driver.get(base + "/#/device/acme/live-1")
    wait(lambda: driver.find_elements(By.CSS_SELECTOR, "#resources tr[data-resource='temp']"), "the resources")
    row = lambda r: driver.find_element(By.CSS_SELECTOR, f"#resources tr[data-resource='{r}']")
    row("temp").find_element(By.TAG_NAME, "button").click()
    wait(lambda: row("temp").find_element(By.CLASS_NAME, "value").text not in ("", "ok"), "the read value")
    float(row("temp").find_element(By.CLASS_NAME, "value").text)
    # An output charted live (its stream) after the last hour (SQL).
    [b for b in row("temp").find_elements(By.TAG_NAME, "button") if b.text == "Chart"][0].click()
    chart = ".chart[data-resource='temp']"
    wait(lambda: int(driver.find_element(By.CSS_SELECTOR, chart).get_attribute("data-points") or 0) >= 3, "points on the temperature chart")
    assert driver.find_element(By.CSS_SELECTOR, chart + " polyline").get_attribute("points")
    led = row("led")
    led.find_element(By.TAG_NAME, "input").send_keys("true")
    [b for b in led.find_elements(By.TAG_NAME, "button") if b.text == "Write"][0].click()
    wait(lambda: led.find_element(By.CLASS_NAME, "value").text != "", "the write's answer")
    # An input/output called with a JSON form: the device's answer is shown.
    io = row("in_out")
    io.find_element(By.TAG_NAME, "input").send_keys('{"value1": 2, "value2": 3}')
    [b for b in io.find_elements(By.TAG_NAME, "button") if b.text == "Call"][0].click()
    wait(lambda: '"sum": 5' in io.find_element(By.CLASS_NAME, "value").text.replace('"sum":5', '"sum": 5'), "the call's answer")
    assert "6" in io.find_element(By.CLASS_NAME, "value").text, io.find_element(By.CLASS_NAME, "value").text
    check_page("device")
    # Register a device: the credential is shown once, with ready snippets.
    driver.get(base + "/#/register")
    wait(lambda: driver.find_element(By.ID, "register").is_displayed(), "the register page")
    driver.find_element(By.ID, "reg-user").send_keys("acme")
    driver.find_element(By.ID, "reg-device").send_keys("new-one")
    driver.find_element(By.CSS_SELECTOR, "#register-form button").click()
    wait(lambda: driver.find_element(By.ID, "registered").is_displayed(), "the credential")
    cred = driver.find_element(By.ID, "reg-credential").text
    assert len(cred) >= 8, cred
    assert f"acme:new-one:{cred}" in driver.find_element(By.ID, "snippet-http").text
    assert cred in driver.find_element(By.ID, "snippet-thinger").text
    assert "THINGER_SERVER" in driver.find_element(By.ID, "snippet-thinger").text
    assert f"acme new-one {cred}" in driver.find_element(By.ID, "snippet-sdk").text
    check_page("register")
    # SQL: the tables listed, a query's rows as a table, an error as the API says it.
    driver.get(base + "/#/sql")
    wait(lambda: "twins" in driver.find_element(By.ID, "tables").text, "the table list")
    # A table's columns, and a query on it started from the list.
    twins_entry = [d for d in driver.find_elements(By.CSS_SELECTOR, "#tables details") if d.find_element(By.TAG_NAME, "summary").text == "twins"][0]
    twins_entry.find_element(By.TAG_NAME, "summary").click()
    wait(lambda: "device" in twins_entry.find_element(By.TAG_NAME, "ul").text, "the twins table's columns")
    twins_entry.find_element(By.TAG_NAME, "button").click()
    assert driver.find_element(By.ID, "sql-text").get_attribute("value") == 'SELECT * FROM "twins" LIMIT 100'
    box = driver.find_element(By.ID, "sql-text")
    box.clear()
    box.send_keys("SELECT device FROM twins ORDER BY device")
    driver.find_element(By.ID, "sql-run").click()
    wait(lambda: "rows in" in driver.find_element(By.ID, "sql-info").text, "the result")
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#sql-rows td")]
    assert "sensor-a" in cells and "new-one" in cells, cells
    # A time column charts the numeric columns against it.
    box.clear()
    box.send_keys("SELECT to_timestamp(v) AS time, v * 2 AS y, 'x' AS label FROM (VALUES (1), (2), (3)) AS t(v)")
    driver.find_element(By.ID, "sql-run").click()
    wait(lambda: driver.find_element(By.CSS_SELECTOR, "#sql-charts .chart[data-column='y']").get_attribute("data-points") == "3", "the result's chart")
    assert not driver.find_elements(By.CSS_SELECTOR, "#sql-charts .chart[data-column='label']")
    check_page("sql")
    # Past the cloud's row limit (20,000 in this test): the API's 413, as it came.
    box.clear()
    box.send_keys("SELECT * FROM generate_series(1, 25000)")
    driver.find_element(By.ID, "sql-run").click()
    wait(lambda: "413" in driver.find_element(By.ID, "error").text, "the row limit")
    # Within it but past what the page shows: the first 10,000 rows, and a word that there
    # are more.
    box.clear()
    box.send_keys("SELECT * FROM generate_series(1, 15000)")
    driver.find_element(By.ID, "sql-run").click()
    wait(lambda: "has more" in driver.find_element(By.ID, "sql-info").text, "the page's own limit")
    assert driver.execute_script("return document.querySelectorAll('#sql-rows tr').length") == 10000
    box.clear()
    box.send_keys("SELECT * FROM nowhere")
    driver.find_element(By.ID, "sql-run").click()
    wait(lambda: "nowhere" in driver.find_element(By.ID, "error").text, "the SQL error")
    # Alarms: the one the test's SQL rule raised, acknowledged, then cleared (and gone from
    # the open view); live, from the event stream.
    driver.get(base + "/#/alarms")
    alarm_rows = lambda: [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#alarm-rows tr")]
    wait(lambda: any("busy-a" in r and "active" in r for r in alarm_rows()), "the active alarm")
    check_page("alarms")
    button = lambda label: [b for b in driver.find_elements(By.CSS_SELECTOR, "#alarm-rows button") if b.text == label][0]
    button("Acknowledge").click()
    wait(lambda: any("busy-a" in r and "acknowledged" in r for r in alarm_rows()), "the acknowledgement")
    button("Clear").click()
    wait(lambda: not any("busy-a" in r for r in alarm_rows()), "the clear")
    # Rules: listed for a user, one created from JSON, then deleted.
    rule_rows = lambda: [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#rule-rows tr")]
    driver.find_element(By.ID, "rules-user").send_keys("acme")
    driver.find_element(By.ID, "rules-load").click()
    wait(lambda: any("busy-a" in r for r in rule_rows()), "the rule list")
    driver.find_element(By.ID, "rule-id").send_keys("console-rule")
    driver.find_element(By.CSS_SELECTOR, "#rule-form button").click()
    wait(lambda: any("console-rule" in r and "threshold" in r for r in rule_rows()), "the new rule")
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#rule-rows tr") if "console-rule" in r.text][0]
    row.find_element(By.TAG_NAME, "button").click()
    wait(lambda: not any("console-rule" in r for r in rule_rows()), "the deleted rule")
    # Admin: a gateway and a token, each secret shown once; the token can be revoked.
    driver.get(base + "/#/admin")
    wait(lambda: "gw1" in driver.find_element(By.ID, "gateways").text, "the gateway list")
    # The cloud's own pipeline reports its queues over its link like any gateway.
    assert "rows buffered" in driver.find_element(By.ID, "gateways").text, driver.find_element(By.ID, "gateways").text
    check_page("admin")
    # Endpoint templates: the user's listed, one created, edited and deleted; a private
    # address refused as the API says.
    ep_rows = lambda: driver.execute_script("return [...document.querySelectorAll('#ep-rows tr')].map(r => r.innerText)")
    driver.find_element(By.ID, "ep-user").send_keys("acme")
    driver.find_element(By.ID, "ep-load").click()
    wait(lambda: any("console-hook" in r for r in ep_rows()), "the endpoint list")
    driver.find_element(By.ID, "ep-name").send_keys("console-ep")
    ep_json = driver.find_element(By.ID, "ep-json")
    ep_json.clear()
    ep_json.send_keys('{"url": "https://example.com/a", "body": "{\\"d\\": \\"{{device}}\\"}"}')
    driver.find_element(By.CSS_SELECTOR, "#ep-form button").click()
    wait(lambda: any("console-ep" in r and "example.com/a" in r and "{{device}}" in r for r in ep_rows()), "the new endpoint")
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#ep-rows tr") if "console-ep" in r.text][0]
    [b for b in row.find_elements(By.TAG_NAME, "button") if b.text == "Edit"][0].click()
    wait(lambda: "example.com/a" in driver.find_element(By.ID, "ep-json").get_attribute("value"), "the edit form")
    ep_json.clear()
    ep_json.send_keys('{"url": "https://example.com/b", "method": "PUT"}')
    driver.find_element(By.CSS_SELECTOR, "#ep-form button").click()
    wait(lambda: any("console-ep" in r and "example.com/b" in r and "PUT" in r for r in ep_rows()), "the edited endpoint")
    ep_json.clear()
    ep_json.send_keys('{"url": "http://10.0.0.1/x"}')
    driver.find_element(By.CSS_SELECTOR, "#ep-form button").click()
    wait(lambda: "400" in driver.find_element(By.ID, "error").text, "the refusal of a private address")
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#ep-rows tr") if "console-ep" in r.text][0]
    [b for b in row.find_elements(By.TAG_NAME, "button") if b.text == "Delete"][0].click()
    wait(lambda: not any("console-ep" in r for r in ep_rows()), "the deleted endpoint")
    driver.find_element(By.ID, "gw-id").send_keys("gw-new")
    driver.find_element(By.CSS_SELECTOR, "#gateway-form button").click()
    wait(lambda: driver.find_element(By.ID, "secret-value").text.startswith("tlg_"), "the gateway token")
    wait(lambda: "gw-new" in driver.find_element(By.ID, "gateways").text, "the new gateway")
    driver.find_element(By.ID, "tok-name").send_keys("console-made")
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait(lambda: driver.find_element(By.ID, "secret-value").text.startswith("tl_"), "the API token")
    made = driver.find_element(By.ID, "secret-value").text
    wait(lambda: "console-made" in driver.find_element(By.ID, "tokens").text, "the new token")
    req = urllib.request.Request(base + "/v1/twins", headers={"Authorization": f"Bearer {made}"})
    with urllib.request.urlopen(req) as r:
        assert r.status == 200
    row = [r for r in driver.find_elements(By.CSS_SELECTOR, "#tokens tr") if "console-made" in r.text][0]
    row.find_element(By.TAG_NAME, "button").click()
    wait(lambda: "console-made" not in driver.find_element(By.ID, "tokens").text, "the revocation")
    try:
        urllib.request.urlopen(req)
        raise AssertionError("a revoked token still works")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.code
    # A read token is offered no controls (and the API would refuse them).
    driver.find_element(By.ID, "signout").click()
    driver.find_element(By.ID, "token").send_keys(read_token)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    wait(lambda: "read" in driver.find_element(By.ID, "who").text, "the read token's scopes")
    driver.get(base + "/#/device/acme/sensor-b")
    wait(lambda: driver.find_element(By.ID, "device-title").text.endswith("/sensor-b"), "the device page")
    assert not driver.find_element(By.ID, "desired-form").is_displayed()
    assert not driver.find_element(By.CSS_SELECTOR, 'a[href="#/register"]').is_displayed()
    # Forced from the browser anyway, the API refuses it and the page says so.
    browser.forced_write_refused(driver, "desired-form")
    print("console: ok")
finally:
    driver.quit()
