"""The examples run as documented."""
import os
import subprocess
import sys

from tests.helpers import ROOT, free_port


def test_prefork_example_merges_workers_that_exited(tmp_path):
    env = dict(os.environ, ROCKSTAR_SEGMENT_DIR=str(tmp_path))
    env.pop("ROCKSTAR_SEGMENT", None)
    out = subprocess.run([sys.executable, "-m", "examples.prefork", str(free_port())], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "jobs.done = 3000 from 3 workers" in out.stdout
    assert os.listdir(tmp_path) == []  # the segment is removed on stop
