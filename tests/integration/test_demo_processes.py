"""`stream-app demo` leaves nothing behind: killed (SIGKILL), hung up on (SIGHUP: its terminal
closed) or interrupted (Ctrl-C), its broker, worker and simulator are gone soon after. And it
runs on replayed real traffic (`--replay`) instead of the simulator."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clickstream_tools.broker import _alive
from clickstream_tools.sources import SHARED

pytestmark = pytest.mark.integration


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.add(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def _start_demo(tmp_path: Path, registry: Path, *extra: str) -> tuple[subprocess.Popen, Path, set[int]]:
    log = tmp_path / "demo.out"
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("CLICKSTREAM_NAMESPACE", None)
    with open(log, "wb") as out:
        demo = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "demo", "--model-dir", str(registry),
                                 "--rate", "5", "--users", "5", *extra], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert demo.poll() is None, log.read_text()[-3000:]
        kids = _children(demo.pid)
        if "Ctrl-C stops everything" in log.read_text() and len(kids) >= 3:
            return demo, log, kids
        time.sleep(0.5)
    demo.kill()
    raise AssertionError(f"demo did not start in time:\n{log.read_text()[-3000:]}")


def _wait_gone(pids: set[int], timeout: float = 90.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if _alive(p)}
        if not left:
            return left
        time.sleep(0.25)
    return {p for p in pids if _alive(p)}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_demo_children_die_with_it(tmp_path, registry, sig):
    demo, log, kids = _start_demo(tmp_path, registry)
    names = {p: _cmdline(p) for p in kids}
    assert any("kafka.Kafka" in c for c in names.values()), names
    assert any(" worker " in c for c in names.values()) and any(" simulate " in c for c in names.values())
    demo.send_signal(sig)
    try:
        demo.wait(90)
    except subprocess.TimeoutExpired:
        demo.kill()
        raise AssertionError(f"demo still running 90 s after {sig!r}:\n{log.read_text()[-3000:]}") from None
    left = _wait_gone(kids)
    for p in left:  # do not leave them behind for the next test either
        os.kill(p, signal.SIGKILL)
    assert not left, {p: names[p] for p in left}
    if sig != signal.SIGKILL:  # the orderly paths stop everything and say where the logs are
        assert demo.returncode == 0
        assert "all stopped. Logs:" in log.read_text()


def test_demo_runs_on_replayed_real_traffic(tmp_path, registry):
    lines = (SHARED / "taobao_slice" / "UserBehavior.csv").read_text().splitlines()[:300]
    log_path = tmp_path / "UserBehavior.csv"
    log_path.write_text("\n".join(lines) + "\n")
    demo, out, kids = _start_demo(tmp_path, registry, "--replay", str(log_path), "--speed", "max")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            "finished" in out.read_text() and "NEXT ACTION" in out.read_text()):
        assert demo.poll() is None, out.read_text()[-3000:]
        time.sleep(0.5)
    text = out.read_text()
    assert f"replay of {log_path} finished" in text and "NEXT ACTION" in text, text[-3000:]
    assert any(f"user={line.split(',')[0]:<6}" in text for line in lines)  # Taobao users' predictions
    demo.send_signal(signal.SIGINT)
    assert demo.wait(90) == 0
    assert not _wait_gone(kids)
    assert "all stopped. Logs:" in out.read_text()
