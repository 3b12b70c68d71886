"""The inference engine alone: one GRU step per event plus the action and churn heads, with each
user's hidden state gathered from and scattered back to a device-resident table of users.

1. events/s by batch size, fp32 and bf16, on CPU and (when present) CUDA, where each step is also
   captured once as a CUDA graph and replayed (mode "cuda_graph": no per-kernel launch cost), and
   (gpu_check) fused: the GRU cell written out so that `torch.compile` can merge the step's ~100
   small kernels, then captured as a graph (mode "compiled_graph");
2. incremental step vs re-running the whole window, as the history grows from 10 to 1,000.

`make gpu-check` (benchmarks/gpu_check.py) reuses these functions for the CUDA goals.

    python -m benchmarks.gru_step [--quick] --json benchmarks/results/gru_step.json
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from models.gru import ClickstreamGRU, Events, GRUConfig

from .common import benchmark_args, environment, write_json


def random_events(B: int, T: int | None, cfg: GRUConfig, device: torch.device) -> Events:
    shape = (B,) if T is None else (B, T)
    win_shape = (*shape, cfg.window)
    return Events(
        action=torch.randint(0, cfg.n_actions, shape, device=device),
        item=torch.randint(1, cfg.n_items, shape, device=device),
        category=torch.randint(1, cfg.n_categories, shape, device=device),
        log_gap=torch.rand(shape, device=device) * 5, log_price=torch.rand(shape, device=device) * 4,
        has_price=torch.ones(shape, device=device),
        window=torch.randint(0, cfg.n_items, win_shape, device=device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Any, device: torch.device, min_s: float) -> float:
    """Seconds per call: the mean over calls for at least `min_s`, each call synchronised with
    the device before the next starts (so on CUDA it is the latency of one call, not a queue)."""
    fn()
    _sync(device)
    n, t = 0, 0.0
    start = time.perf_counter()
    while t < min_s:
        fn()
        n += 1
        _sync(device)
        t = time.perf_counter() - start
    return t / n


@torch.no_grad()
def by_batch(model: ClickstreamGRU, device: torch.device, dtype: torch.dtype, users: int,
             batches: list[int], min_s: float) -> list[dict[str, Any]]:
    cfg = model.cfg
    table = torch.zeros(cfg.layers, users, cfg.hidden, device=device, dtype=dtype)
    rows = []
    for B in batches:
        x = random_events(B, None, cfg, device)
        idx = torch.randperm(users, device=device)[:B]  # distinct users, as in one scored batch

        def step(x: Events = x, idx: torch.Tensor = idx) -> None:
            h = table.index_select(1, idx)  # gather
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out, _, h_new = model.step(x, h)
                torch.softmax(out.action_logits, -1)
                torch.sigmoid(out.churn_logit)
            table.index_copy_(1, idx, h_new.to(dtype))  # scatter

        s = timed(step, device, min_s)
        rows.append({"device": device.type, "dtype": str(dtype).replace("torch.", ""), "batch": B,
                     "mode": "eager", "seconds_per_step": s, "events_per_s": B / s,
                     "users_in_table": users})
    return rows


def fusable_step(model: ClickstreamGRU) -> Callable[[Events, torch.Tensor], tuple[Any, Any, torch.Tensor]]:
    """`model.step` with its one GRU layer written out (PyTorch's gate order r, z, n): nn.GRU runs
    as one opaque cuDNN call that a compiler cannot fuse with what comes before and after it."""
    if model.cfg.layers != 1:
        raise ValueError("the written-out cell covers one GRU layer")
    g = model.gru  # its weights read here: compilers do not trace nn.GRU's attribute lookup
    w_ih, b_ih, w_hh, b_hh = g.weight_ih_l0, g.bias_ih_l0, g.weight_hh_l0, g.bias_hh_l0

    def step(x: Events, h: torch.Tensor) -> tuple[Any, Any, torch.Tensor]:
        z = model._embed(x)
        ir, iz, in_ = F.linear(z, w_ih, b_ih).chunk(3, -1)
        hr, hz, hn = F.linear(h[0], w_hh, b_hh).chunk(3, -1)
        r, u = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        h1 = torch.lerp(torch.tanh(in_ + r * hn), h[0], u)  # (1 - u) * n + u * h
        out, rq = model._heads(h1, x)
        return out, rq, h1.unsqueeze(0)
    return step


@torch.no_grad()
def by_batch_graph(model: ClickstreamGRU, device: torch.device, dtype: torch.dtype, users: int,
                   batches: list[int], min_s: float, compiled: bool = False) -> list[dict[str, Any]]:
    """The same step as `by_batch` (gather, GRU step, action and churn heads, scatter), captured
    once per batch size as a CUDA graph and replayed; `compiled`: the `fusable_step`, compiled
    by `torch.compile` for each batch size before the capture. A row whose compile or capture
    fails carries the error instead of a timing."""
    if device.type != "cuda":
        raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
    step = fusable_step(model) if compiled else model.step
    cfg = model.cfg
    table = torch.zeros(cfg.layers, users, cfg.hidden, device=device, dtype=dtype)
    rows: list[dict[str, Any]] = []
    for B in batches:
        x = random_events(B, None, cfg, device)  # static inputs: a real server copies into them
        idx = torch.randperm(users, device=device)[:B]

        def body(x: Events = x, idx: torch.Tensor = idx) -> None:
            h = table.index_select(1, idx)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32,
                                cache_enabled=False):
                out, _, h_new = step(x, h)
                torch.softmax(out.action_logits, -1)
                torch.sigmoid(out.churn_logit)
            table.index_copy_(1, idx, h_new.to(dtype))

        row: dict[str, Any] = {"device": device.type, "dtype": str(dtype).replace("torch.", ""),
                               "batch": B, "mode": "compiled_graph" if compiled else "cuda_graph",
                               "users_in_table": users}
        try:
            if compiled:
                t0 = time.perf_counter()
                body = torch.compile(body, dynamic=False, fullgraph=True)
                body()
                row["compile_s"] = time.perf_counter() - t0
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (cuDNN picks its kernels)
                for _ in range(3):
                    body()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                body()
            s = timed(graph.replay, device, min_s)
            row.update(seconds_per_step=s, events_per_s=B / s)
        except Exception as e:  # noqa: BLE001 - capture refused (a host sync, a driver limit) or
            # the compiler failed: the row says so and the other rows still run
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        rows.append(row)
    return rows


@torch.no_grad()
def history(model: ClickstreamGRU, device: torch.device, lengths: list[int], B: int,
            min_s: float) -> list[dict[str, Any]]:
    """Per-event cost of the next prediction: one step, vs the whole history re-run."""
    cfg = model.cfg
    rows = []
    h = model.init_state(B, device)
    x1 = random_events(B, None, cfg, device)
    step_s = timed(lambda: model.step(x1, h), device, min_s)
    for L in lengths:
        xs = random_events(B, L, cfg, device)
        rerun_s = timed(lambda xs=xs: model(xs), device, min_s)
        rows.append({"history": L, "batch": B, "step_us": 1e6 * step_s / B,
                     "rerun_us": 1e6 * rerun_s / B, "ratio": rerun_s / step_s})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = benchmark_args(__doc__, "gru_step")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--users", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    cfg = GRUConfig(n_items=5000, n_categories=60, emb_dim=args.hidden, hidden=args.hidden,
                    repeat_flag=True)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    min_s = 0.05 if args.quick else 0.5
    users = 10_000 if args.quick else args.users
    results: dict[str, Any] = {"by_batch": [], "history": []}
    for dev in devices:
        model = ClickstreamGRU(cfg).to(dev).eval()
        sizes = [1, 16, 256, 1024, 4096]
        if dev.type == "cuda":
            sizes += [16384, 65536, 131072]
        if args.quick:
            sizes = sizes[:4]
        for dtype in (torch.float32, torch.bfloat16):
            results["by_batch"] += by_batch(model, dev, dtype, users, sizes, min_s)
            if dev.type == "cuda":
                results["by_batch"] += by_batch_graph(model, dev, dtype, users, sizes, min_s)
        lengths = [10, 100, 1000] if not args.quick else [10, 100]
        results["history"] += [{"device": dev.type, **r} for r in
                               history(model, dev, lengths, 64 if dev.type == "cpu" else 1024, min_s)]
    hist = [r for r in results["history"] if r["device"] == devices[-1].type]
    write_json(args.json, {
        "benchmark": "gru_step", "environment": environment(devices[-1].type), "quick": args.quick,
        "parameters": {"hidden": args.hidden, "users_in_table": users, "model": "random weights"},
        **results,
        "flat_in_history": {"step_us_10": hist[0]["step_us"], "step_us_max": hist[-1]["step_us"],
                            "note": "the incremental step does not depend on history length by "
                                    "construction: it is one step whatever came before"},
        "cuda_measured": torch.cuda.is_available(),
    })
    for r in results["by_batch"]:
        eps = r.get("events_per_s")
        shown = f"{eps:>12,.0f} events/s" if eps is not None else f"failed: {r.get('error')}"
        print(f"{r['device']} {r['dtype']:>8} {r['mode']:>10} batch {r['batch']:>6}: {shown}")
    for r in results["history"]:
        print(f"{r['device']} history {r['history']:>5}: step {r['step_us']:.1f} us, "
              f"rerun {r['rerun_us']:.1f} us")


if __name__ == "__main__":
    main()
