"""Child processes that do not outlive the process that started them (the demo's broker, worker
and simulator): a closed terminal (SIGHUP), a SIGTERM or a SIGKILL of the parent takes them down.

On Linux the child asks the kernel for a signal when its parent dies (prctl PR_SET_PDEATHSIG,
through ctypes, between fork and exec; it survives exec, so the JVM or Python started there keeps
it). The parent's own signal handlers (`on_signals`) cover the orderly paths: Ctrl-C, SIGTERM,
SIGHUP stop the children in order and report. Elsewhere only the orderly paths exist.

Side effects: prctl in forked children; signal handlers in the calling process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when this process dies (Linux), or None
    where the kernel has no such thing. The child also checks that its parent is still the one
    that forked it: a parent that died before prctl ran would never send the signal."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl  # looked up before fork: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def spawn(args: Sequence[str], log_path: Any, env: dict[str, str] | None = None,
          sig: int = signal.SIGTERM) -> subprocess.Popen:
    """Start `args` in a session of its own (Ctrl-C in the terminal reaches only the parent, which
    stops children in order), output to `log_path`, dying with this process."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(list(args), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent(sig))


def stop(children: Sequence[subprocess.Popen], timeout_s: float = 30.0) -> None:
    """SIGTERM every child still running, wait, SIGKILL what is left after `timeout_s`."""
    for c in children:
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for c in children:
        try:
            c.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()


def on_signals(handler: Callable[[int], None],
               signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)) -> None:
    """Call `handler(signum)` on each of `signals` (Ctrl-C, a kill, a closed terminal)."""
    for s in signals:
        signal.signal(s, lambda signum, _frame: handler(signum))
