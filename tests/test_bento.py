"""Versioned Bentos: build offline with the model, serve from the tag, export and import elsewhere."""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import yaml

from local_server import BENTOML, ROOT, import_dev_model, running_server

BODY = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6]],
        "pred_len": 2, "top_k": 1}


def bentoml(home, *args, cwd=ROOT):
    done = subprocess.run([BENTOML, *args], cwd=cwd, env={**os.environ, "BENTOML_HOME": str(home)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    home = tmp_path_factory.mktemp("build-home")
    model_tag = import_dev_model(home, "kronos-bento")
    done = subprocess.run([sys.executable, "scripts/build_bento.py", "--model", "kronos-bento:latest"],
                          cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(home)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return home, model_tag, done.stdout.strip().splitlines()[-1]


def test_bento_records_model_labels_and_env(built):
    home, model_tag, bento_tag = built
    path = bentoml(home, "get", bento_tag, "-o", "path").strip()
    info = yaml.safe_load(open(os.path.join(path, "bento.yaml")).read())
    assert [m["tag"] for m in info["models"]] == [model_tag]
    assert {"name": "KRONOS_MODEL", "value": model_tag, "stage": "all"} in info["envs"]
    labels = info["labels"]
    assert labels["model"] == model_tag.replace(":", "-") and labels["git_commit"] != "unknown"
    assert labels["variant"] == "cpu" and "model_revision" in labels
    requirements = (ROOT / "build" / "requirements.cpu.txt").read_text()
    assert "torch==2.13.0+cpu" in requirements
    assert os.path.isfile(os.path.join(path, "src", "service.py"))
    assert os.path.isfile(os.path.join(path, "src", "configuration", "kronos.yaml"))


def serve_and_forecast(home, bento_tag, model_tag, tmp_path):
    with running_server(home, {}, tmp_path / "serve.log", target=bento_tag, cwd=tmp_path) as srv:
        ready = httpx.get(srv.url + "/v1/readyz").json()
        assert ready["model"] == model_tag and ready["dev_checkpoint"] is True
        response = httpx.post(srv.url + "/v1/predict/single", json=BODY, timeout=60)
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2
        return response.json()["predictions"]


def test_bento_serves_from_its_tag_and_from_an_exported_file(built, tmp_path):
    home, model_tag, bento_tag = built
    here = serve_and_forecast(home, bento_tag, model_tag, tmp_path)
    exported = tmp_path / "kronos.bento"
    bentoml(home, "export", bento_tag, str(exported))
    fresh = tmp_path / "fresh-home"
    bentoml(fresh, "import", str(exported))
    assert model_tag in bentoml(fresh, "models", "list")
    there = serve_and_forecast(fresh, bento_tag, model_tag, tmp_path)
    assert here == there
