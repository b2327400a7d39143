"""Requests/s and p50/p95 latency of `qoqmed serve` over loopback HTTP: one client vs many concurrent clients,
with micro-batching on and off.

    python benchmarks/serve_latency.py [--model DIR] [--engines transformers,vllm] [--out FILE.json]

Without --model, a tiny random-init model (the quickstart's size) is saved to a temporary folder. The server runs
as a separate `qoqmed serve` process, as users run it; every request carries a 224x224 PNG and an 8x2500 ECG and
asks for --max-new-tokens answer tokens (a random model rarely stops early, so answers have that length). Each of
--engines (`qoqmed serve --engine`) serves the same scenarios in the same run; vllm needs an environment with the
vllm extra (make test-vllm builds one: .venv-vllm/bin/python benchmarks/serve_latency.py --engines ...).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def payload(max_new_tokens: int) -> dict:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((224, 224, 3)) * 255).astype("uint8")).save(buf, format="PNG")
    ecg = io.BytesIO()
    np.save(ecg, (rng.standard_normal((8, 2500)) * 0.3).astype("float32"))
    return {"question": "Which findings are present?", "max_new_tokens": max_new_tokens,
            "images": [base64.b64encode(buf.getvalue()).decode()],
            "ecg": [{"npy": base64.b64encode(ecg.getvalue()).decode()}]}


class Server:
    def __init__(self, model: Path, max_batch: int, engine: str = "transformers"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("qoqmed")
        extra = ["--kv-cache-gib", "1"] if engine == "vllm" and not torch.cuda.is_available() else []
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--model", str(model), "--port", str(self.port), "--max-batch", str(max_batch),
             "--engine", engine, *extra, "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def __enter__(self):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError("server did not start in 300 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def run_clients(url: str, body: dict, clients: int, total: int, label: str) -> dict:
    latencies: list[float] = []
    counter = iter(range(total))
    failures = 0
    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(label, total=total)
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            before = (await c.get("/healthz")).json()["batching"]

            async def client():
                nonlocal failures
                for _ in counter:
                    t0 = time.perf_counter()
                    r = await c.post("/v1/predict", json=body)
                    latencies.append(time.perf_counter() - t0)
                    failures += r.status_code != 200
                    bar.advance(task)

            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            elapsed = time.perf_counter() - t0
            after = (await c.get("/healthz")).json()["batching"]
    batches = after["batches"] - before["batches"]
    lat = np.array(latencies)
    return {"clients": clients, "requests": total, "failures": failures, "seconds": round(elapsed, 2),
            "requests_per_s": round(total / elapsed, 2), "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 1),
            "p95_ms": round(float(np.percentile(lat, 95)) * 1e3, 1),
            "answer_tokens_per_s": round(total * body["max_new_tokens"] / elapsed, 1),
            "server_batches": batches,
            "server_mean_batch": round((after["requests"] - before["requests"]) / max(1, batches), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model folder; default: a tiny random-init model")
    ap.add_argument("--out", default="benchmarks/results/serve_latency.json")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--single", type=int, default=24, help="requests sent one after another by one client")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--concurrent", type=int, default=96, help="requests shared by the concurrent clients")
    ap.add_argument("--engines", default="transformers", help="comma-separated: transformers, vllm")
    args = ap.parse_args()

    body = payload(args.max_new_tokens)
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
                     "max_new_tokens": args.max_new_tokens, "inputs": "224x224 PNG + 8x2500 ECG + question"}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from qoqmed.modeling.tiny import build_tiny

            processor, net = build_tiny(seed=0)
            model = Path(tmp) / "tiny"
            net.save_pretrained(model)
            processor.save_pretrained(model)
            results["model"] = f"tiny random init ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters)"
        else:
            results["model"] = str(model)
        for engine in args.engines.split(","):
            scenarios = results.setdefault("engines", {}).setdefault(engine, {})
            with Server(model, max_batch=8, engine=engine) as srv:
                asyncio.run(run_clients(srv.url, body, 1, 4, "warm-up"))
                scenarios["single_client"] = asyncio.run(run_clients(srv.url, body, 1, args.single, "1 client"))
                scenarios["concurrent_batched"] = asyncio.run(
                    run_clients(srv.url, body, args.clients, args.concurrent, f"{args.clients} clients, batching"))
            with Server(model, max_batch=1, engine=engine) as srv:
                asyncio.run(run_clients(srv.url, body, 1, 4, "warm-up"))
                scenarios["concurrent_unbatched"] = asyncio.run(
                    run_clients(srv.url, body, args.clients, args.concurrent, f"{args.clients} clients, max-batch 1"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
