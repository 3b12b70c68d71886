"""What every benchmark JSON carries: git sha, versions, machine, device, parameters, timings."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def benchmark_args(doc: str | None, name: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: --quick (smoke-test size) and --json (its result file)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke-test size (the test suite runs this)")
    ap.add_argument("--json", default=f"benchmarks/results/{name}.json")
    return ap


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        # a copy of the tree without its .git (the lent GPU machines): the caller names the commit
        return os.environ.get("CLICKSTREAM_GIT_SHA", "unknown")


def environment(device: str | None = None) -> dict[str, Any]:
    import numpy
    import torch

    env = {"git_sha": git_sha(), "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "processor": platform.processor() or platform.machine(),
           "cuda_available": torch.cuda.is_available()}
    if device:
        env["device"] = device
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"written_unix": time.time(), **payload}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def stderr_progress(p: dict[str, Any]) -> None:
    if p.get("done"):
        v = p.get("valid", {})
        print(f"\repoch {p['epoch']}: train {p['train_loss']:.4f} valid {v.get('total', float('nan')):.4f}"
              f" ({p['elapsed_s']:.0f}s)" + " " * 20, file=sys.stderr, flush=True)
    else:
        print(f"\repoch {p['epoch']} [{p['batch']}/{p['batches']}] loss {p['loss']:.4f} "
              f"{p['elapsed_s']:.0f}s", end="", file=sys.stderr, flush=True)
