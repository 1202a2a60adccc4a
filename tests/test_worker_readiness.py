"""A worker reports ready only when every worker of its server has loaded its model."""
from __future__ import annotations

import subprocess
import sys

from kronos_serving.worker_readiness import SiblingReadiness


def test_ready_only_when_every_live_sibling_marked_itself(tmp_path):
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me = SiblingReadiness(2, tmp_path, parent=1234)
        other = SiblingReadiness(2, tmp_path, pid=sibling.pid, parent=1234)
        me.mark_ready()
        assert not me.all_ready() and me.ready_workers() == 1   # the sibling still loads
        other.mark_ready()
        assert me.all_ready() and other.all_ready()
        assert not SiblingReadiness(2, tmp_path, parent=999).all_ready()  # another server's workers
    finally:
        sibling.kill()
        sibling.wait()
    assert not me.all_ready() and me.ready_workers() == 1  # a dead sibling no longer counts
    assert me.lost_workers() == [sibling.pid]  # and it is reported lost (container watchdog)
    assert SiblingReadiness(1, tmp_path, parent=4321).all_ready()  # one worker: nothing to wait for


def test_an_unwritable_marker_directory_falls_back_to_this_worker_alone(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    readiness = SiblingReadiness(2, blocker, parent=1)
    assert not readiness.mark_ready()
    assert readiness.all_ready()
