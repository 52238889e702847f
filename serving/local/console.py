"""What `fabriek serve`'s processes print, and how they take a stop signal."""

from __future__ import annotations


def say(message: str) -> None:
    """One line of `fabriek serve`'s output, flushed (a launcher relays it at once)."""
    print(f"fabriek: {message}", flush=True)


def raise_keyboard_interrupt(signum, frame):  # noqa: ARG001 (signal handler signature)
    """SIGTERM as Ctrl-C: systemd's, Kubernetes', a launcher's stop takes the clean path."""
    raise KeyboardInterrupt
