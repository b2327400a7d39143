"""The server on loopback under bad input: every 4xx in the API's error shape, connection and body timeouts, and a
bounded soak of mixed good and bad requests after which the process's memory is back near where it started."""

from __future__ import annotations

import base64
import ctypes
import gc
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from test_serve import ServerThread

from qoqmed.infer import QoQMedPipeline
from qoqmed.modeling.tiny import build_tiny
from qoqmed.serve import create_app

BODY_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def server():
    processor, model = build_tiny(seed=0)
    pipe = QoQMedPipeline(model, processor, max_new_tokens=4, name="tiny")
    app = create_app(pipe, max_body_bytes=BODY_LIMIT, max_batch=8, batch_wait_ms=5, max_new_tokens_limit=16,
                     body_timeout_s=1.0)
    with ServerThread(app, head_timeout_s=1.0, keep_alive_s=5) as srv:
        srv.app = app
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def png(size, color=(90, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def npy(arr) -> str:
    buf = io.BytesIO()
    np.save(buf, arr)
    return b64(buf.getvalue())


def check_error(resp: httpx.Response, status: int, param: str | None = "any") -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param != "any":
        assert body["error"]["param"] == param, body
    return body["error"]


def test_framework_errors_share_the_error_shape(client):
    assert check_error(client.get("/no/such/path"), 404, None)["code"] == "not_found"
    assert check_error(client.get("/v1/predict"), 405, None)["code"] == "method_not_allowed"
    assert check_error(client.get("/static/missing.js"), 404)["code"] == "not_found"
    deep = b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    check_error(client.post("/v1/predict", content=deep, headers={"content-type": "application/json"}), 400)
    check_error(client.post("/v1/predict", json={"question": 3}), 422, "question")
    too_big = check_error(client.post("/v1/predict", json={"question": "q" * (BODY_LIMIT + 1)}), 413)
    assert too_big["code"] == "body_too_large"


def test_chat_caps_and_system_inputs(client):
    def chat(messages):
        return client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})

    check_error(chat([{"role": "user", "content": "x" * 20_001}]), 422, "messages[0].content")
    parts = [{"type": "text", "text": "y" * 19_000}] * 3
    assert check_error(chat([{"role": "user", "content": parts}]), 400, "messages")["code"] == "too_long"
    check_error(chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}] * 32
                     + [{"role": "user", "content": "q"}]), 422, "messages")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(png((20, 20)))}}
    err = check_error(chat([{"role": "system", "content": [{"type": "text", "text": "be brief"}, image]},
                            {"role": "user", "content": "hi"}]), 400, "messages[0].content[1]")
    assert "system message may hold text only" in err["message"]
    assert chat([{"role": "user", "content": [image, {"type": "text", "text": "a\x1eb"}]}]).status_code == 200
    check_error(chat([{"role": "user", "content": "<|image_pad|>"}]), 400, "question")


def test_npy_with_fs_is_read_as_the_file_route_reads_it(client):
    def ask(arr):
        return client.post("/v1/predict", json={"question": "q", "max_new_tokens": 2,
                                                "ecg": [{"npy": npy(arr), "fs": 500}]})

    assert ask(np.zeros((8, 5000), np.float32)).status_code == 200
    for arr in (np.ones((8, 5000), complex), np.ones((8, 5000), bool)):
        assert "real numbers" in check_error(ask(arr), 400, "ecg[0]")["message"]


def test_stalled_connections_are_closed(server):
    """A client that sends no request head, or only part of a body, does not hold a connection for ever."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        t0 = time.monotonic()
        assert s.recv(1024) == b"" and time.monotonic() - t0 < 8
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"question\"")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408") and b'"code":"request_timeout"' in reply


def _held() -> tuple[list, list]:
    """PIL images and arrays over 1 MB that are alive in this process (the server runs in it)."""
    gc.collect()
    objects = gc.get_objects()
    images = [o.size for o in objects if isinstance(o, Image.Image) and o.width * o.height > 1 << 18]
    arrays = [o.shape for o in objects if isinstance(o, np.ndarray) and o.nbytes > 1 << 20]
    return images, arrays


def _rss() -> int:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so RSS shows what is still held
    except OSError:
        pass
    return psutil.Process().memory_info().rss


def test_soak_mixed_requests_answer_in_shape_and_release_memory(client, server):
    big = b64(png((2000, 2000)))  # 16 MB decoded each (RGBA); a batch of them kept referenced shows in the RSS
    wide = b64(png((4000, 10)))
    good_npy = npy(np.zeros((8, 2500), np.float32))
    cases = [
        (200, {"question": "Findings?", "images": [big], "max_new_tokens": 2}),
        (200, {"question": "Rhythm?", "ecg": [{"npy": good_npy}], "max_new_tokens": 2}),
        (400, {"question": "q", "images": [wide]}),
        (400, {"question": "q", "images": ["bm90IGFuIGltYWdl"]}),
        (400, {"question": "q", "images": ["https://example.org/x.png"]}),
        (400, {"question": "q", "ecg": [{"npy": npy(np.ones((8, 100), complex)), "fs": 500}]}),
        (422, {"question": "q", "ecg": [{"signal": [[0.0] * 10] * 8, "fs": 0}]}),
        (422, {"question": "q", "unknown": 1}),
        (400, {"question": "<|ecg_pad|>"}),
    ]
    for status, body in cases:  # every path once, alone
        assert client.post("/v1/predict", json=body).status_code == status

    def one(k):
        status, body = cases[k % len(cases)]
        resp = client.post("/v1/predict", json=body)
        if status == 200:
            assert resp.status_code == 200, resp.text
            assert isinstance(resp.json()["text"], str)
        else:
            check_error(resp, status)
        return resp.status_code

    def soak_round(pool) -> list[int]:
        statuses = list(pool.map(one, range(180)))
        # the last batch holds four large images: after their answers nothing may keep them
        return statuses + list(pool.map(lambda _: one(0), range(4)))

    with ThreadPoolExecutor(4) as pool:
        # a concurrent warm-up round: the allocator's per-thread arenas grow once, to the size the server settles at
        list(pool.map(one, range(36)))
        baseline = _rss()
        statuses = soak_round(pool)
        after_first = _rss()
        statuses += soak_round(pool)
    assert statuses.count(200) == 88 and len(statuses) == 368
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["queue"] == 0
    # Nothing decoded is still referenced (the batcher, the middleware and the handlers let go of every request)...
    images, arrays = _held()
    assert images == [] and arrays == [], f"still referenced: {images[:4]} {arrays[:4]}"
    # ...and the process is back near its size before the soak (allocator slack of a few arenas aside).
    assert client.post("/v1/predict", json={"question": "q", "max_new_tokens": 1}).status_code == 200
    grown, again = after_first - baseline, _rss() - after_first
    print(f"RSS {baseline >> 20} MiB before the soak, {grown / 2**20:+.1f} MiB after one round, "
          f"{again / 2**20:+.1f} MiB more after a second")
    # a round decodes 24 images of 16 MB: keeping even one per round would show in the second round's growth
    assert again < 16 << 20, f"RSS grew by {again >> 20} MiB more in a second, identical round"
    assert grown < 160 << 20, f"RSS grew by {grown >> 20} MiB over the soak"
