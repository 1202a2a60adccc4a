"""The README's examples work as written (the server address is the only substitution)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from local_server import ROOT, import_dev_model, running_server

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, re.DOTALL)


def blocks(language: str, needle: str) -> list[str]:
    return [code for lang, code in BLOCKS if lang == language and needle in code]


def test_quickstart_is_make_serve_and_make_test():
    quickstart = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in blocks("bash", "make serve")[0].splitlines()]
    assert commands == ["make serve", "make test"] and "make serve" in quickstart


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    tag = import_dev_model(home, "kronos-readme")
    with running_server(home, {"KRONOS_MODEL": tag}, tmp_path_factory.mktemp("logs") / "s.log") as srv:
        yield srv


@pytest.mark.parametrize("index", range(len(blocks("bash", "curl"))))
def test_curl_examples(server, index):
    command = blocks("bash", "curl")[index].replace("http://localhost:3000", server.url)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    if "job_id" in body:  # the job example polls until the job is done
        assert body["status"] == "succeeded" and len(body["result"]["predictions"]) == 2, body
    elif "forecasts" in body:  # the record of the earlier request with X-Request-ID: my-req-1
        assert body["forecasts"][0]["request_id"] == "my-req-1", body
    else:
        assert "predictions" in body or "results" in body, body


def test_python_client_example(server, capsys):
    code = blocks("python", "SyncHTTPClient")[0].replace("http://localhost:3000", server.url)
    exec(compile(code, "README", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "[2, 1]"


def test_python_job_polling_example(server, capsys):
    code = blocks("python", "/v1/jobs")[0].replace("http://localhost:3000", server.url)
    exec(compile(code, "README", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-1] == "succeeded [2, 1]"


def test_cli_and_python_runtime_examples(tmp_path):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "prices.csv").write_text((ROOT / "examples" / "prices.csv").read_text())
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    command = blocks("bash", "-m kronos_runtime forecast")[0].replace(".venv/bin/python", sys.executable)
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "forecast.csv").read_text().startswith("timestamp,open,high,low,close")
    code = blocks("python", "result = forecaster.forecast")[0]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "open" in done.stdout and "rows x 6 columns" in done.stdout
    engine = blocks("python", "forecaster.engine(")[0]  # driving an engine directly
    done = subprocess.run([sys.executable, "-c", engine], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[8, 8]"
