"""A domain's cluster yields the CPU as a whole once it serves (serving/domain_cluster.py,
``yield_cpu``): its session's CPU group takes the niceness, which every process of the
cluster shares, workers started before and after alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

AUTOGROUP = Path("/proc/sys/kernel/sched_autogroup_enabled")
PROBE = """
import subprocess, sys
from pathlib import Path
from serving.domain_cluster import yield_cpu

before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
yield_cpu(13)
after = subprocess.run([sys.executable, "-c", "print(open('/proc/self/autogroup').read())"],
                       capture_output=True, text=True).stdout
print(Path(f"/proc/{before.pid}/autogroup").read_text().split()[-1], after.split()[-1])
before.kill()
"""


@pytest.mark.skipif(not AUTOGROUP.exists() or AUTOGROUP.read_text().strip() != "1",
                    reason="the kernel schedules without autogroup here")
def test_the_whole_session_takes_the_niceness_processes_started_before_included():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                          start_new_session=True, cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["13", "13"]
