"""Drives the web UI in headless Chromium (Debian's chromium + chromium-driver, through
Selenium's WebDriver) and prints what a person would see, as JSON, for tests/integration/ui.rs
to check: the graph's nodes and edges, a failed table's error, a live run's page updating,
the buttons each role gets, axe-core's accessibility violations and horizontal overflow of
every page at a desktop and a phone size. Screenshots of every page go to `shots`.

Usage: ui_browser.py '<json: base, viewer, operator, runs{finished,failed,live}, shots, axe>'
"""

import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def browser():
    options = webdriver.ChromeOptions()
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--force-device-scale-factor=1"]:
        options.add_argument(arg)
    options.binary_location = os.environ.get("MEDALLION_CHROMIUM", "/usr/bin/chromium")
    service = Service(os.environ.get("MEDALLION_CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(120)
    driver.set_page_load_timeout(120)
    return driver


def sign_in(driver, base, token):
    driver.get(base + "/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "header .viewer"), "the signed-in page")


def wait(driver, condition, what, timeout=240):
    start = time.time()
    while True:
        value = condition()
        if value:
            return value
        if time.time() - start > timeout:
            page = driver.execute_script("return document.body.outerHTML;")
            raise TimeoutError(f"waiting for {what} on {driver.current_url}:\n{page}")
        time.sleep(0.25)


def graph(driver):
    nodes = {g.get_attribute("id"): g.get_attribute("data-state")
             for g in driver.find_elements(By.CSS_SELECTOR, "svg.graph g.node")}
    edges = sorted(p.get_attribute("data-edge") for p in driver.find_elements(By.CSS_SELECTOR, "svg.graph path.edge"))
    return {"nodes": nodes, "edges": edges}


def check_page(driver, axe_source):
    """axe-core's violations (impact and rule) and how far the page overflows sideways."""
    driver.execute_script(axe_source)
    violations = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        axe.run(document, {resultTypes: ['violations']})
          .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                 targets: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))))
          .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e), targets: []}]));
    """)
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth;")
    return {"violations": violations, "overflow": overflow}


def live_run(driver, base, run_id):
    """Opens a running run's page and watches it change without a reload."""
    driver.get(f"{base}/runs/{run_id}")
    state = lambda: driver.execute_script(
        "const s = document.querySelector('#run-live .facts [data-state]'); return s && s.dataset.state;")
    finished = lambda: len(driver.find_elements(By.CSS_SELECTOR, "#run-live tr[data-status]:not([data-status=waiting])"))
    first = {"state": state(), "finished_tables": finished()}
    driver.execute_script("window.__still_the_same_page = 42;")
    seen = [first["state"]]

    def ended():
        s = state()
        if s and s != seen[-1]:
            seen.append(s)
        return s in ("succeeded", "failed", "cancelled")

    wait(driver, ended, "the run to end on its page", timeout=300)
    return {
        "first": first,
        "states": seen,
        "last": {"state": state(), "finished_tables": finished()},
        "same_page": driver.execute_script("return window.__still_the_same_page === 42;"),
        "refreshes": int(driver.execute_script(
            "return document.querySelector('#run-live').dataset.refreshed || '0';")),
    }


def main():
    args = json.loads(sys.argv[1])
    base, runs, shots = args["base"], args["runs"], args["shots"]
    axe_source = open(args["axe"]).read()
    os.makedirs(shots, exist_ok=True)
    driver = browser()
    out = {}
    try:
        driver.set_window_size(*SIZES["desktop"])
        driver.get(base + "/")
        out["anonymous_title"] = driver.title
        out["anonymous_has_form"] = bool(driver.find_elements(By.ID, "token"))
        sign_in(driver, base, args["viewer"])

        out["live"] = live_run(driver, base, runs["live"])

        pages = {
            "pipelines": "/",
            "pipeline": "/pipelines/shop",
            "pipeline-failed": "/pipelines/broken",
            "run": f"/runs/{runs['finished']}",
            "run-failed": f"/runs/{runs['failed']}",
            "table": "/pipelines/shop/tables/gold.customer_360",
            "runs": "/runs",
            "executors": "/executors",
        }
        out["pages"] = {}
        for name, path in pages.items():
            page = {}
            for size, (width, height) in SIZES.items():
                driver.set_window_size(width, height)
                driver.get(base + path)
                page[size] = check_page(driver, axe_source)
                driver.save_screenshot(os.path.join(shots, f"{name}-{size}.png"))
            page["title"] = driver.title
            out["pages"][name] = page
        driver.set_window_size(*SIZES["desktop"])

        driver.get(base + "/pipelines/shop")
        out["graph"] = graph(driver)
        out["viewer_buttons"] = [b.get_attribute("data-action") for b in driver.find_elements(By.CSS_SELECTOR, "button[data-action]")]
        driver.get(base + "/pipelines/broken")
        out["broken_graph"] = graph(driver)
        driver.get(f"{base}/runs/{runs['failed']}")
        out["failed_errors"] = {s.get_attribute("data-table"): s.find_element(By.TAG_NAME, "pre").text
                                for s in driver.find_elements(By.CSS_SELECTOR, "section.failure")}
        driver.get(f"{base}/runs/{runs['finished']}")
        out["task_executors"] = [tr.find_elements(By.TAG_NAME, "td")[0].get_attribute("textContent")
                                 for tr in driver.find_elements(By.CSS_SELECTOR, "details.tasks tbody tr")]
        driver.get(base + "/pipelines/shop/tables/gold.customer_360")
        out["table_preview_rows"] = len(driver.find_elements(By.CSS_SELECTOR, "#preview tbody tr"))
        out["table_history_read"] = driver.find_element(By.CSS_SELECTOR, "#history tbody tr td.read").text
        out["table_types"] = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#schema tbody td code")]
        out["table_columns"] = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#schema tbody th")]

        # An operator signs in and triggers a run from the pipeline's page.
        driver.find_element(By.CSS_SELECTOR, "header .viewer button").click()
        wait(driver, lambda: driver.find_elements(By.ID, "token"), "the sign-in form")
        sign_in(driver, base, args["operator"])
        driver.get(base + "/pipelines/shop")
        out["operator_buttons"] = [b.get_attribute("data-action") for b in driver.find_elements(By.CSS_SELECTOR, "button[data-action]")]
        driver.find_element(By.CSS_SELECTOR, "button[data-action=trigger]").click()
        said = wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "p.said"), "what the trigger said")
        out["trigger_said"] = said[0].text
        # Cancel it from its page (it runs for seconds: gold.slow), then pause the pipeline.
        triggered = said[0].text.split(" ")[1]
        driver.get(f"{base}/runs/{triggered}")
        buttons = driver.find_elements(By.CSS_SELECTOR, "button[data-action=cancel]")
        out["cancel_offered"] = bool(buttons)
        if buttons:
            buttons[0].click()
            wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "p.said, p.error"), "what the cancel said")
            said = driver.find_elements(By.CSS_SELECTOR, "p.said, p.error")
            out["cancel_said"] = said[0].text
        driver.get(base + "/")
        driver.find_element(By.CSS_SELECTOR, "section[aria-labelledby=p-shop] button[data-action=pause]").click()
        said = wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "p.said"), "what the pause said")
        out["pause_said"] = said[0].text
        out["said_in_url"] = "said" in driver.current_url
        driver.get(base + "/")
        out["said_after_reload"] = bool(driver.find_elements(By.CSS_SELECTOR, "p.said"))
        out["resume_offered"] = bool(driver.find_elements(By.CSS_SELECTOR, "section[aria-labelledby=p-shop] button[data-action=resume]"))
    finally:
        driver.quit()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
