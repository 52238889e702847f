"""A domain's processes, found by descent, pinned to its cores once it serves (serving/local/process_tree.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from serving.local.process_tree import descendants, pin_unpinned, stop_processes

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")

_SLEEPER = "import time; time.sleep(60)"


def test_unpinned_threads_move_and_pinned_ones_stay():
    everywhere = set(range(os.cpu_count()))
    free = subprocess.Popen([sys.executable, "-c", _SLEEPER])
    pinned = subprocess.Popen([sys.executable, "-c", _SLEEPER], preexec_fn=lambda: os.sched_setaffinity(0, {1}))
    try:
        processes = [psutil.Process(free.pid), psutil.Process(pinned.pid)]
        assert set(os.sched_getaffinity(free.pid)) == everywhere
        assert pin_unpinned(processes, frozenset({0})) >= 1
        assert os.sched_getaffinity(free.pid) == {0}
        assert os.sched_getaffinity(pinned.pid) == {1}  # an engine on its pool's core stays there
    finally:
        stop_processes([psutil.Process(free.pid), psutil.Process(pinned.pid)])
    assert free.poll() is not None and pinned.poll() is not None


def test_descendants_include_grandchildren():
    child = subprocess.Popen([sys.executable, "-c",
                              f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {_SLEEPER!r}]); "
                              "time.sleep(60)"])
    try:
        deadline = psutil.time.time() + 30
        while len(descendants(os.getpid())) < 2 and psutil.time.time() < deadline:
            psutil.time.sleep(0.1)
        family = descendants(child.pid)
        assert len(family) == 1
    finally:
        stop_processes([psutil.Process(child.pid), *descendants(child.pid)])
