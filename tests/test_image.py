"""Opt-in (KRONOS_IMAGE_TESTS=1): the OCI image builds, starts, is ready and forecasts like the
local service. Needs a container backend; on the sandboxed machines see shared/oci-sandbox."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from local_server import ROOT, free_port, import_dev_model, running_server

pytestmark = pytest.mark.skipif(os.environ.get("KRONOS_IMAGE_TESTS") != "1",
                                reason="image tests are opt-in: KRONOS_IMAGE_TESTS=1")
BODY = {"data": [[10.0, 10.5, 9.8, 10.2], [10.2, 10.9, 10.1, 10.7], [10.7, 11.0, 10.4, 10.6],
                 [10.6, 10.8, 10.3, 10.5]], "pred_len": 3, "top_k": 1}


def run(command, env, timeout=1800):
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_image_starts_and_forecasts_like_the_local_service(tmp_path):
    backend = os.environ.get("KRONOS_IMAGE_BACKEND") or next(
        (b for b in ("docker", "podman", "buildah") if shutil.which(b)), None)
    assert backend, "no container backend"
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home")}
    model = import_dev_model(tmp_path / "home", "kronos-image")
    bento = run([sys.executable, "scripts/build_bento.py", "--model", model], env)
    image = run(["scripts/build_image.sh", "--bento", bento, "--backend", backend], env)
    runner = "podman" if backend in ("podman", "buildah") else "docker"
    port = free_port()
    container = run([runner, "run", "-d", "--network", "host", "-e", f"PORT={port}", image], env, 120)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(url + "/v1/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        ready = httpx.get(url + "/v1/readyz").json()
        assert ready["model"] == model
        from_image = httpx.post(url + "/v1/predict/single", json=BODY, timeout=120).json()
    finally:
        subprocess.run([runner, "rm", "-f", container], capture_output=True)
    with running_server(tmp_path / "home", {}, tmp_path / "local.log", target=bento, cwd=tmp_path) as srv:
        local = httpx.post(srv.url + "/v1/predict/single", json=BODY, timeout=60).json()
    assert from_image["predictions"] == local["predictions"]
