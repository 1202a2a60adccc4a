"""Bentos: a plain `bentoml build` records and packs the configured model; the Bento serves it with
no environment set, also exported and imported into a fresh BENTOML_HOME; never random weights."""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import yaml

from local_server import BENTOML, ROOT, import_dev_model, readiness_after_loading, running_server

BODY = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6]],
        "pred_len": 2, "top_k": 1}


def bentoml(home, *args, env=None, cwd=ROOT):
    done = subprocess.run([BENTOML, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BENTOML_HOME": str(home), **(env or {})})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def manifest(home, bento_tag) -> dict:
    path = bentoml(home, "get", bento_tag, "-o", "path").strip()
    return yaml.safe_load(open(os.path.join(path, "bento.yaml")).read())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`KRONOS_MODEL=<tag>:latest bentoml build`: nothing but BentoML's own command."""
    home = tmp_path_factory.mktemp("build-home")
    model_tag = import_dev_model(home, "kronos-bento")
    out = bentoml(home, "build", "--output", "tag", env={"KRONOS_MODEL": "kronos-bento:latest"})
    return home, model_tag, out.strip().splitlines()[-1].removeprefix("__tag__:")


def test_plain_build_packs_the_configured_model_and_selects_it(built):
    home, model_tag, bento_tag = built
    info = manifest(home, bento_tag)
    assert [m["tag"] for m in info["services"][0]["models"]] == [model_tag]  # resolved from :latest
    envs = {e["name"]: e["value"] for e in info["envs"]}
    assert envs["KRONOS_MODEL"] == model_tag and envs["KRONOS_DEV_FALLBACK"] == "false"
    assert info["labels"]["model"] == model_tag.replace(":", "-") and info["labels"]["variant"] == "cpu"
    assert "https://download.pytorch.org/whl/cpu" in info["python"]["extra_index_url"]
    path = bentoml(home, "get", bento_tag, "-o", "path").strip()
    for packed in ("src/service.py", "src/configuration/kronos.yaml",
                   "src/kronos_runtime/engine/priority.py", "src/kronos_serving/cache/__init__.py"):
        assert os.path.isfile(os.path.join(path, packed)), packed


def serve_and_forecast(home, bento_tag, model_tag, tmp_path):
    with running_server(home, {}, tmp_path / "serve.log", target=bento_tag,
                        cwd=tmp_path) as srv:
        ready = httpx.get(srv.url + "/v1/readyz").json()
        assert ready["model"] == model_tag and ready["dev_checkpoint"] is True
        response = httpx.post(srv.url + "/v1/predict/single", json=BODY, timeout=60)
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2
        return response.json()["predictions"]


def test_bento_serves_its_packed_model_here_and_from_an_exported_file(built, tmp_path):
    home, model_tag, bento_tag = built
    here = serve_and_forecast(home, bento_tag, model_tag, tmp_path)
    exported = tmp_path / "kronos.bento"
    bentoml(home, "export", bento_tag, str(exported))
    fresh = tmp_path / "fresh-home"
    bentoml(fresh, "import", str(exported))
    assert model_tag in bentoml(fresh, "models", "list")
    there = serve_and_forecast(fresh, bento_tag, model_tag, tmp_path)
    assert here == there


def test_bento_with_a_blanked_model_is_not_ready_instead_of_random_weights(built, tmp_path):
    """The old ConfigMap's `KRONOS_MODEL: ""`: the hub is unreachable, and the Bento's
    dev_fallback=false keeps it from serving a generated checkpoint while reporting Ready."""
    home, _, bento_tag = built
    env = {"KRONOS_MODEL": ""}
    with running_server(home, env, tmp_path / "blank.log", target=bento_tag, cwd=tmp_path,
                        wait_ready=False) as srv:
        ready = readiness_after_loading(srv)
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "kronos-dev" not in bentoml(home, "models", "list")


def test_build_script_adds_the_commit_label_and_the_gpu_flavour(built, tmp_path):
    home, model_tag, _ = built
    done = subprocess.run([sys.executable, "scripts/build_bento.py", "--model", "kronos-bento:latest",
                           "--variant", "gpu"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BENTOML_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    info = manifest(home, done.stdout.strip().splitlines()[-1])
    assert [m["tag"] for m in info["services"][0]["models"]] == [model_tag]
    labels, envs = info["labels"], {e["name"]: e["value"] for e in info["envs"]}
    assert labels["variant"] == "gpu" and labels["git_commit"] not in ("", "unknown")
    assert envs["KRONOS_DEVICE"] == "cuda" and info["docker"]["cuda_version"]
    assert not info["python"].get("extra_index_url")


def test_model_declarations_follow_the_configuration(tmp_path, monkeypatch):
    from bentoml.models import HuggingFaceModel

    from kronos_serving.bento_models import model_refs, selection_envs
    from kronos_serving.settings import Settings

    assert model_refs(Settings()) == {} and selection_envs(Settings()) == []  # nothing configured
    hub = model_refs(Settings(model="NeoQuasar/Kronos-base", model_revision="abc"))
    assert [(type(r), r.model_id, r.revision) for r in hub.values()] == [
        (HuggingFaceModel, "NeoQuasar/Kronos-base", "abc"),
        (HuggingFaceModel, "NeoQuasar/Kronos-Tokenizer-base", "main")]
    assert model_refs(Settings(model="absent-model:v1")) == {}  # not in the store: readyz says why
    assert model_refs(Settings(model=str(tmp_path))) == {}     # a directory is not packed
    assert selection_envs(Settings(variants="a:v1=90,b:v2=10")) == [
        {"name": "KRONOS_VARIANTS", "value": "a:v1=90,b:v2=10"}]
