"""A domain's processes, found by descent (serving/local/process_tree.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from serving.local.process_tree import descendants, stop_processes

_SLEEPER = "import time; time.sleep(60)"


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
