"""Several GPUs on one host: worker i takes its own GPU; readyz lists every worker's device."""
from __future__ import annotations

import subprocess
import sys

import pytest

from kronos_serving.placement import worker_device
from kronos_serving.worker_readiness import SiblingReadiness


@pytest.mark.parametrize("device,index,gpus,expected", [
    ("cuda", 1, 4, "cuda:0"), ("cuda", 2, 4, "cuda:1"), ("cuda", 4, 4, "cuda:3"),
    ("cuda", 5, 4, "cuda:0"),          # more workers than GPUs: round robin
    ("cuda", 2, 1, "cuda"),            # one GPU: every worker on it
    ("cuda", None, 4, "cuda"),         # not in a BentoML worker
    ("cuda:2", 1, 4, "cuda:2"),        # an explicit GPU is kept
    ("cpu", 3, 4, "cpu"),
])
def test_each_worker_gets_its_own_gpu(device, index, gpus, expected):
    assert worker_device(device, index, gpus) == expected


def test_every_worker_is_on_a_different_gpu_when_there_are_enough():
    devices = [worker_device("cuda", index, 8) for index in range(1, 9)]
    assert len(set(devices)) == 8


def test_ready_markers_report_each_workers_device(tmp_path):
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me = SiblingReadiness(2, tmp_path, parent=77)
        other = SiblingReadiness(2, tmp_path, pid=sibling.pid, parent=77)
        me.mark_ready("1 cuda:0")
        other.mark_ready("2 cuda:1")
        assert me.worker_devices() == {"1": "cuda:0", "2": "cuda:1"}
    finally:
        sibling.kill()
        sibling.wait()
    assert me.worker_devices() == {"1": "cuda:0"}  # a gone worker drops out
