"""`qoqmed serve`: the HTTP server (web page, OpenAI-compatible chat, predict) for a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, err, fail
from .predict import PromptStyle, load_pipeline


def serve(
    model: Annotated[Path, typer.Option(help="Model folder (save_pretrained) or LoRA adapter folder, e.g. "
                                             "quickstart_out/rl/model.")]
    = Path("quickstart_out/rl/model"),
    host: Annotated[str, typer.Option(help="Interface to bind. The default serves this machine only; the API "
                                           "has no authentication, so put it behind an authenticating proxy "
                                           "before exposing it to a network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most requests answered by one generate() call.")] = 8,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to share its batch.")]
    = 5.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MiB; larger ones get 413.")] = 32.0,
    body_timeout_s: Annotated[float, typer.Option(help="Seconds a request's body may take to arrive; later, 408.")]
    = 60.0,
    head_timeout_s: Annotated[float, typer.Option(help="Seconds a connection may take to send a request's headers "
                                                       "before it is closed.")] = 10.0,
    max_connections: Annotated[int, typer.Option(help="Open connections and requests at once; beyond, 503.")]
    = 1000,
    max_new_tokens: Annotated[int, typer.Option(help="Default answer length limit in tokens.")] = 256,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    prompt_style: PromptStyle = "qoqmed",
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, ... (default: cuda if available; transformers "
                                                       "engine only).")] = None,
    engine: Annotated[str, typer.Option(help="transformers, or vllm (needs the vllm extra; paged KV cache and "
                                             "continuous batching, on the device vLLM was built for).")]
    = "transformers",
    max_model_len: Annotated[Optional[int], typer.Option(help="vllm: longest prompt + answer in tokens (default: "
                                                               "the model's positions).")] = None,
    kv_cache_gib: Annotated[Optional[float], typer.Option(help="vllm on CPU: KV cache size in GiB.")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve a model over HTTP: a web page at /, POST /v1/chat/completions (OpenAI-compatible), POST /v1/predict,
    GET /healthz. Concurrent requests are batched into shared generate() calls."""
    from ..serve import create_app
    from ..serve.server import run

    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] binding {host}: anyone who can reach this port can use the model")
    options = None
    if engine == "vllm":
        if device is not None:
            fail("--device applies to --engine transformers; vLLM runs on the device it was built for")
        options = {"max_model_len": max_model_len, "kv_cache_gib": kv_cache_gib}
    elif max_model_len is not None or kv_cache_gib is not None:
        fail("--max-model-len and --kv-cache-gib apply to --engine vllm")
    pipe = load_pipeline(model, device, max_new_tokens, prompt_style=prompt_style, engine=engine,
                         engine_options=options)
    application = create_app(pipe, max_body_bytes=int(max_body_mb * (1 << 20)), max_batch=max_batch,
                             batch_wait_ms=batch_wait_ms, max_new_tokens_limit=max_tokens_limit,
                             body_timeout_s=body_timeout_s)
    console.print(f"serving {model} on http://{host}:{port}/ (API docs at /docs), {prompt_style} prompt style, "
                  f"{engine} engine")
    run(application, host=host, port=port, log_level=log_level, head_timeout_s=head_timeout_s,
        max_connections=max_connections)
