"""Backtests, calendars and the /ui page against a real server (and a real headless Chromium)."""
from __future__ import annotations

import re
import shutil
import time

import httpx
import numpy as np
import pytest

from conftest import ROOT, make_candles
from local_server import import_dev_model, running_server

DOCS_SCREENSHOT = ROOT / "docs" / "ui" / "quality-page.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("bentoml-home")
    tags = [import_dev_model(home, "kronos-tiny", seed=1), import_dev_model(home, "kronos-tiny", seed=2)]
    env = {"KRONOS_VARIANTS": f"{tags[0]}=50,{tags[1]}=50", "KRONOS_MAX_WAIT_MS": "20",
           "KRONOS_MAX_BACKTEST_FOLDS": "20"}
    with running_server(home, env, tmp_path_factory.mktemp("logs") / "server.log") as srv:
        yield srv


def post(server, route, body):
    return httpx.post(server.url + route, json=body, timeout=120)


def versions(server) -> list[str]:
    return [v["model_version"] for v in httpx.get(server.url + "/v1/readyz").json()["variants"]]


def test_backtest_folds_equal_direct_forecasts(server):
    frame, stamps = make_candles(60, seed=8)
    iso = [t.isoformat() for t in stamps]
    body = {"series": [{"data": frame.to_numpy().tolist(), "timestamps": iso}], "horizon": 4,
            "folds": 3, "step": 3, "lookback": 32, "sample_count": 2, "seed": 5,
            "quantiles": [0.1, 0.9], "temperature": 0.8}
    response = post(server, "/v1/backtest", body)
    assert response.status_code == 200, response.text
    report = response.json()
    served = versions(server)
    assert len(report["folds"]) == 3 * len(served)
    assert set(report["metrics"]) == {*served, "naive", "seasonal_naive"}
    assert {"mae", "rmse", "mape", "smape", "mase", "direction_accuracy", "coverage", "pinball_loss",
            "crps"} <= set(report["metrics"][served[0]]["close"])
    for fold in report["folds"]:
        origin = iso.index(fold["origin"]) + 1
        direct = post(server, "/v1/predict/single", {
            "data": body["series"][0]["data"][:origin], "timestamps": iso[:origin], "lookback": 32,
            "future_timestamps": iso[origin:origin + 4], "pred_len": 4, "sample_count": 2, "seed": 5,
            "quantiles": [0.1, 0.9], "temperature": 0.8, "model_version": fold["model_version"]})
        assert direct.status_code == 200, direct.text
        predictions = direct.json()["predictions"]
        np.testing.assert_allclose(fold["forecast"]["close"], [p["close"] for p in predictions],
                                   rtol=1e-5)
        assert fold["actual"]["close"] == pytest.approx(frame["close"].iloc[origin:origin + 4].tolist())
        assert fold["timestamps"] == [p["timestamp"] for p in predictions]


def test_backtest_rejects_bad_input_naming_the_field(server):
    frame, stamps = make_candles(20)
    series = [{"data": frame.to_numpy().tolist(), "timestamps": [t.isoformat() for t in stamps]}]
    for body, field in (({"series": series, "horizon": 10, "folds": 3}, "folds"),
                        ({"series": series, "horizon": 2, "folds": 15}, "folds"),  # 15 x 2 > 20
                        ({"series": series, "horizon": 2, "model_versions": ["nope"]}, "model_version"),
                        ({"series": series, "horizon": 2, "season_period": 19}, "season_period")):
        response = post(server, "/v1/backtest", body)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == field
    bad_stamps = [dict(series[0], timestamps=series[0]["timestamps"][::-1])]
    response = post(server, "/v1/backtest", {"series": bad_stamps, "horizon": 2})
    assert response.status_code == 400 and response.json()["field"] == "series[0].timestamps"


def test_forecast_response_names_the_calendar_rule(server):
    frame, stamps = make_candles(30, freq="B", start="2024-12-02")
    body = {"data": frame.to_numpy().tolist(), "timestamps": [t.isoformat() for t in stamps],
            "pred_len": 3, "calendar": "XNYS"}
    response = post(server, "/v1/predict/single", body)
    assert response.status_code == 200, response.text
    assert response.json()["calendar"] == {"rule": "exchange", "name": "XNYS", "session": None}
    # The input ends on Friday 2025-01-10: the next sessions are Monday to Wednesday.
    assert [p["timestamp"][:10] for p in response.json()["predictions"]] == [
        "2025-01-13", "2025-01-14", "2025-01-15"]
    plain = post(server, "/v1/predict/single", {**body, "calendar": None, "return_samples": True,
                                                "sample_count": 2})
    assert plain.json()["calendar"]["rule"] == "business_days"
    assert np.shape(plain.json()["samples"]["close"]) == (2, 3)
    unknown = post(server, "/v1/predict/single", {**body, "calendar": "NOPE"})
    assert unknown.status_code == 400 and unknown.json()["field"] == "calendar"


def test_live_accuracy_scores_outcomes_once(server):
    frame, stamps = make_candles(40, freq="B", start="2024-01-02")
    rows, iso = frame.to_numpy().tolist(), [t.isoformat() for t in stamps]
    version = versions(server)[0]
    forecast = post(server, "/v1/predict/single", {
        "data": rows[:37], "timestamps": iso[:37], "pred_len": 3, "series_id": "ACME",
        "quantiles": [0.1, 0.9], "sample_count": 4, "seed": 3, "model_version": version})
    assert forecast.status_code == 200, forecast.text
    assert [p["timestamp"] for p in forecast.json()["predictions"]] == iso[37:]  # business days
    request_id = forecast.json()["request_id"]
    for _ in range(100):  # records are written off the request path
        if httpx.get(f"{server.url}/v1/forecasts/{request_id}").status_code == 200:
            break
        time.sleep(0.1)
    partial = post(server, "/v1/outcomes", {"series_id": "ACME", "timestamps": iso[37:39],
                                            "data": rows[37:39]})
    assert partial.status_code == 200, partial.text
    assert partial.json()["scored_steps"] == 2
    repeated = post(server, "/v1/outcomes", {"series_id": "ACME", "timestamps": iso[37:],
                                             "data": rows[37:]})
    assert repeated.json()["new_outcomes"] == 1 and repeated.json()["scored_steps"] == 1

    accuracy = httpx.get(server.url + "/v1/accuracy", params={"model_version": version}).json()
    close = accuracy["metrics"][version]["close"]
    predicted = [p["close"] for p in forecast.json()["predictions"]]
    assert close["count"] == 3 and accuracy["scored_steps"] == {version: 3}
    assert close["mae"] == pytest.approx(np.mean(np.abs(np.array(predicted) - frame["close"][37:])))
    assert {"rmse", "mape", "smape", "mase", "direction_accuracy", "coverage", "interval_coverage",
            "pinball_loss"} <= set(close)
    metrics = httpx.get(server.url + "/v1/metrics").text
    for step in ("1", "2", "3"):
        assert (f'kronos_forecast_abs_error_count{{model_version="{version}",step="{step}"}} 1.0'
                in metrics)
    bad = post(server, "/v1/outcomes", {"series_id": "ACME", "timestamps": iso[:2], "data": rows[:1]})
    assert bad.status_code == 400 and bad.json()["field"] == "timestamps"
    assert httpx.get(server.url + "/v1/accuracy", params={"since": "nope"}).status_code == 400


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through its chromedriver (apt: chromium chromium-driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if not driver_path or not chromium:
        pytest.fail("chromium and chromium-driver are needed: make system-deps")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,2300"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.execute_script(script), message=f"page never satisfied: {script}")


def test_ui_draws_a_forecast_and_a_backtest(server, browser, tmp_path):
    browser.get(server.url + "/ui/")
    wait_for(browser, "return document.getElementById('model-version').options.length === 3")
    assert "ready: 2 model version(s)" in browser.find_element("id", "service-status").text
    browser.find_element("id", "load-example").click()
    wait_for(browser, "return document.getElementById('data-summary').textContent.includes('120 rows')")

    browser.find_element("id", "run-forecast").click()
    wait_for(browser, "return document.getElementById('forecast-chart').dataset.drawn === 'true'")
    chart = browser.execute_script(
        "const c = Chart.getChart('forecast-chart'); return {labels: c.data.labels.length, "
        "sets: c.data.datasets.map(d => [d.label, d.data.filter(v => v !== null).length])};")
    assert chart["labels"] == 120 + 12
    sets = dict(chart["sets"])
    assert sets["history close"] == 120 and sets["band 0.1-0.9"] == 12
    assert any(label.startswith("forecast close") and n == 13 for label, n in chart["sets"])
    assert "calendar rule: continuous" in browser.find_element("id", "forecast-summary").text
    browser.save_screenshot(str(tmp_path / "forecast.png"))

    browser.find_element("id", "horizon").clear()
    browser.find_element("id", "horizon").send_keys("6")
    browser.find_element("id", "run-backtest").click()
    wait_for(browser, "return document.getElementById('backtest-chart').dataset.drawn === 'true'")
    rows = browser.execute_script("return [...document.querySelectorAll('#metrics-table tbody tr')]"
                                  ".map(r => r.cells[0].textContent)")
    assert sorted(rows) == sorted([*versions(server), "naive", "seasonal_naive"])
    fold_lines = browser.execute_script(
        "return Chart.getChart('backtest-chart').data.datasets.filter(d => d.label.startsWith('_'))"
        ".map(d => d.data.filter(v => v !== null).length)")
    assert fold_lines == [6] * 8  # 4 folds x 2 model versions, 6 steps each
    assert browser.find_element("id", "error").text == ""

    browser.find_element("id", "refresh-live").click()  # live accuracy per model version
    live = httpx.get(server.url + "/v1/accuracy").json()["scored_steps"]
    wait_for(browser, "return document.getElementById('live-summary').textContent !== ''")
    live_rows = browser.execute_script("return [...document.querySelectorAll('#live-table tbody tr')]"
                                       ".map(r => r.cells[0].textContent)")
    assert sorted(live_rows) == sorted(live)
    for version, steps in live.items():
        assert f"{version}: {steps} scored steps" in browser.find_element("id", "live-summary").text
    browser.save_screenshot(str(tmp_path / "page.png"))
    DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tmp_path / "page.png", DOCS_SCREENSHOT)

    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors



@pytest.mark.parametrize("needle", ["/v1/backtest", "/v1/outcomes"])
def test_readme_examples(server, needle, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    [code] = [block for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if needle in block]
    monkeypatch.chdir(ROOT)  # examples/prices.csv
    exec(compile(code.replace("http://localhost:3000", server.url), "README", "exec"), {})
    printed = capsys.readouterr().out
    if needle == "/v1/backtest":
        assert "naive" in printed and "seasonal_naive" in printed
    else:
        assert "['2024-05-06T00:00:00', '2024-05-07T00:00:00'] business_days" in printed
        assert "'scored_steps': 1" in printed and "'mae'" in printed
