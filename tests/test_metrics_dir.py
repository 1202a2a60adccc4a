"""Two servers on one BENTOML_HOME: the second no longer wipes the first one's metrics."""
from __future__ import annotations

import re
import subprocess

import httpx

from kronos_serving.metrics_dir import isolate_metrics_dir, server_key
from local_server import import_dev_model, running_server

BODY = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6]],
        "pred_len": 2, "top_k": 1}


def counter(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M))


def forecast(url: str, times: int) -> None:
    for _ in range(times):
        assert httpx.post(url + "/v1/predict/single", json=BODY, timeout=60).status_code == 200


def test_a_second_server_on_the_same_home_keeps_the_first_ones_metrics(tmp_path):
    home = tmp_path / "home"
    tag = import_dev_model(home, "kronos-metrics")
    with running_server(home, {"KRONOS_MODEL": tag}, tmp_path / "a.log") as first:
        forecast(first.url, 2)
        assert counter(first.url, "kronos_requests_total") == 2
        with running_server(home, {"KRONOS_MODEL": tag}, tmp_path / "b.log") as second:
            forecast(second.url, 1)
            assert counter(first.url, "kronos_requests_total") == 2
            assert counter(first.url, "kronos_model_info") == 1
            assert counter(second.url, "kronos_requests_total") == 1
            forecast(first.url, 1)
            assert counter(first.url, "kronos_requests_total") == 3
            assert counter(first.url, "bentoml_service_request_total") >= 3
            assert counter(first.url, "kronos_model_load_seconds_count") == 1


def test_each_server_gets_its_own_directory_and_gone_servers_are_removed(tmp_path):
    shared = tmp_path / "prometheus_multiproc_dir"
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / "prometheus_multiproc_dir.servers" / server_key(gone.pid)
    stale.mkdir(parents=True)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    assert isolate_metrics_dir(None, dict(env)) is None  # the arbiter (no worker index) stays put
    own = isolate_metrics_dir(1, env)
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(own) and own.is_dir() and own.parent == stale.parent
    assert not stale.exists()
    sibling = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    assert isolate_metrics_dir(2, sibling) == own  # workers of one server share it
