"""Auth, body size and rate limits in front of a real server (issue #6, part 1-2)."""
from __future__ import annotations

import bentoml
import httpx
import pytest

from local_server import import_dev_model, running_server

BODY = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7]], "pred_len": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    tag = import_dev_model(home, "kronos-guard")
    env = {"KRONOS_MODEL": tag, "KRONOS_API_KEYS": "key-one, key-two",
           "KRONOS_MAX_REQUEST_SIZE_MB": "0.01", "KRONOS_RATE_LIMIT_PER_MINUTE": "600"}
    with running_server(home, env, tmp_path_factory.mktemp("logs") / "s.log") as srv:
        yield srv


def test_keys_are_required_and_accepted_in_both_headers(server):
    url = server.url + "/v1/predict/single"
    missing = httpx.post(url, json=BODY)
    assert missing.status_code == 401 and "WWW-Authenticate" in missing.headers
    assert httpx.post(url, json=BODY, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.post(url, json=BODY, headers={"Authorization": "Bearer key-one"}).status_code == 200
    assert httpx.post(url, json=BODY, headers={"X-API-Key": "key-two"}).status_code == 200
    for path in ("/v1/healthz", "/v1/readyz", "/healthz", "/readyz", "/v1/metrics", "/metrics"):
        assert httpx.get(server.url + path).status_code == 200, path


def test_bentoml_client_sends_the_key_as_a_bearer_token(server):
    with bentoml.SyncHTTPClient(server.url, token="key-two") as client:
        assert len(client.predict_single(**BODY)["predictions"]) == 1


def test_oversized_bodies_get_413(server):
    big = {"data": [[10.0, 10.5, 9.8, 10.2]] * 2000, "pred_len": 1}
    headers = {"X-API-Key": "key-one"}
    assert httpx.post(server.url + "/v1/predict/single", json=big, headers=headers).status_code == 413

    def chunks():
        yield httpx.Request("POST", "/", json=big).content

    chunked = httpx.post(server.url + "/v1/predict/single", content=chunks(),
                         headers={**headers, "Content-Type": "application/json"})
    assert chunked.status_code == 413


def test_rate_limit_answers_429_with_retry_after(tmp_path):
    tag = import_dev_model(tmp_path / "home", "kronos-rate")
    env = {"KRONOS_MODEL": tag, "KRONOS_RATE_LIMIT_PER_MINUTE": "3"}
    with running_server(tmp_path / "home", env, tmp_path / "s.log") as srv:
        statuses = [httpx.post(srv.url + "/v1/predict/single", json=BODY).status_code for _ in range(4)]
        assert statuses[:3] == [200, 200, 200] and statuses[3] == 429
        limited = httpx.post(srv.url + "/v1/predict/single", json=BODY)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert httpx.get(srv.url + "/v1/readyz").status_code == 200
