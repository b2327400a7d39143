"""Micro-batching: requests that arrive within a few milliseconds share one ``generate`` call.

Generation is dominated by per-step overhead for small models and by weight reads for large ones; either way one
call over 8 prompts costs far less than 8 calls. The first request of a batch waits at most ``wait_ms`` for
company; while a batch runs, new requests queue up and form the next batch.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..infer.pipeline import GREEDY, Decoding, Prediction, PreparedQuery, QoQMedPipeline


class QueueFull(RuntimeError):
    pass


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    largest: int = 0
    busy_s: float = 0.0

    def as_dict(self) -> dict:
        mean = self.requests / self.batches if self.batches else 0.0
        return {"requests": self.requests, "batches": self.batches, "mean_batch": round(mean, 2),
                "largest_batch": self.largest, "busy_s": round(self.busy_s, 3)}


class Batcher:
    def __init__(self, pipe: QoQMedPipeline, max_batch: int = 8, wait_ms: float = 5.0, max_queue: int = 1024):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.pipe = pipe
        self.max_batch = int(max_batch)
        self.wait_s = max(0.0, float(wait_ms)) / 1000.0
        self.max_queue = int(max_queue)
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        # One worker thread: the model runs one batch at a time; the event loop stays free to accept requests.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qoqmed-generate")

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="qoqmed-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, prepared: PreparedQuery, max_new_tokens: int, decoding: Decoding | None = None
                     ) -> Prediction:
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are waiting; try again shortly")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((prepared, int(max_new_tokens), fut, decoding or GREEDY))
        return await fut

    async def _collect(self) -> list:
        assert self._queue is not None
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            # The batch lives only in _serve's frame: nothing here holds its images, ECGs or answers while the next
            # batch is awaited, so their memory is released as soon as each request has been answered.
            await self._serve(await self._collect())

    async def _serve(self, batch: list) -> None:
        loop = asyncio.get_running_loop()
        # Requests asking for different answer lengths or decoding go in separate calls, so none gets more than
        # it asked; a seeded one goes alone, so its answer does not depend on what it was batched with.
        groups: dict[tuple, list] = {}
        for item in batch:
            max_new, fut, decoding = item[1], item[2], item[3]
            groups.setdefault((max_new, decoding, id(fut) if decoding.seed is not None else None), []).append(item)
        for (max_new, decoding, _), items in groups.items():
            items = [it for it in items if not it[2].done()]  # the client may have gone away
            if not items:
                continue
            t0 = time.perf_counter()
            try:
                preds = await loop.run_in_executor(self._executor, self.pipe.generate,
                                                   [it[0] for it in items], max_new, decoding)
            except Exception as exc:  # noqa: BLE001 - every waiting request must hear about the failure
                for it in items:
                    if not it[2].done():
                        it[2].set_exception(exc)
                continue
            s = self.stats
            s.busy_s += time.perf_counter() - t0
            s.requests += len(items)
            s.batches += 1
            s.largest = max(s.largest, len(items))
            for it, pred in zip(items, preds):
                if not it[2].done():
                    it[2].set_result(pred)
