"""Prefetching batch iterator over planned index batches.

A torch DataLoader calls ``__getitem__`` once per sample in Python and collates
afterwards; with the image cache a whole batch is one fancy-index read of a
memory map, so the only thing left to hide is that read (and the host->device
copy). ``BatchLoader`` runs ``fetch(rows)`` for the next few planned batches
in background threads (NumPy copies and torch ops release the GIL), pins the
result when training on CUDA, and yields batches in plan order. Worker errors
are re-raised in the consumer; closing or abandoning the iterator stops them.

Kept over ``torch.utils.data.DataLoader`` by measurement
(benchmarks/results/batch_loader.md: same memmap, same plan, same prefetch and
pinning): a DataLoader with worker processes pickles every batch through shared
memory and, rebuilt per epoch as the plan changes, restarts its workers; it was
about half as fast, and with persistent workers no faster than these threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

_DONE = object()


@dataclass(frozen=True)
class LoaderSettings:
    workers: int  # background fetch threads (0 = fetch inline, no prefetch)
    prefetch: int  # batches fetched ahead of the one being trained on
    pin_memory: bool


def loader_settings(threads: int, device: torch.device | str) -> LoaderSettings:
    """Size the loader from the rule's ``threads``.

    Fetching a batch is one memcpy-bound read, so one thread keeps up with a GPU
    until the rule has many cores; the rest stay with torch's intra-op pool.
    Pinned memory only pays off for host->CUDA copies.
    """
    threads = max(1, int(threads))
    dev = torch.device(device)
    workers = 1 if threads < 8 else 2
    prefetch = 2 * workers if dev.type == "cuda" else workers + 1
    return LoaderSettings(workers=workers, prefetch=prefetch, pin_memory=dev.type == "cuda")


def _pin(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, tuple | list):
        return type(obj)(_pin(o) for o in obj)
    return obj


class BatchLoader:
    """Iterate ``fetch(plan[i])`` for i = 0, 1, ... with ``prefetch`` batches in flight.

    ``workers`` threads pull batch numbers from a shared counter; results are
    handed over through one bounded slot per in-flight batch, so memory stays
    at ``prefetch`` batches and order is the plan's order regardless of which
    thread finished first.
    """

    def __init__(self, fetch: Callable[[Any], Any], plan: Sequence[Any], *, workers: int = 1,
                 prefetch: int = 2, pin_memory: bool = False):
        if workers < 0 or prefetch < 0:
            raise ValueError("workers and prefetch must be >= 0")
        self.fetch = fetch
        self.plan = plan
        self.workers = workers if prefetch > 0 else 0
        self.prefetch = max(prefetch, self.workers)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_settings(cls, fetch, plan, settings: LoaderSettings) -> BatchLoader:
        return cls(fetch, plan, workers=settings.workers, prefetch=settings.prefetch,
                   pin_memory=settings.pin_memory)

    def __len__(self) -> int:
        return len(self.plan)

    def _load(self, i: int) -> Any:
        out = self.fetch(self.plan[i])
        return _pin(out) if self.pin_memory else out

    def __iter__(self) -> Iterator[Any]:
        if self.workers == 0:
            for i in range(len(self.plan)):
                yield self._load(i)
            return
        yield from self._threaded()

    def _threaded(self) -> Iterator[Any]:
        n = len(self.plan)
        self._stop.clear()
        slots: dict[int, queue.Queue] = {}
        lock = threading.Lock()
        window = threading.Semaphore(self.prefetch)  # batches fetched but not yet consumed
        counter = iter(range(n))

        def slot(i: int) -> queue.Queue:
            with lock:
                return slots.setdefault(i, queue.Queue(maxsize=1))

        def work() -> None:
            while not self._stop.is_set():
                while not window.acquire(timeout=0.05):
                    if self._stop.is_set():
                        return
                with lock:
                    i = next(counter, None)
                if i is None:
                    window.release()
                    return
                try:
                    item = (self._load(i), None)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                    item = (None, exc)
                slot(i).put(item)
                if item[1] is not None:
                    return

        self._threads = [threading.Thread(target=work, name=f"batch-loader-{k}", daemon=True)
                         for k in range(self.workers)]
        for t in self._threads:
            t.start()
        try:
            for i in range(n):
                q = slot(i)
                while True:
                    try:
                        value, exc = q.get(timeout=0.1)
                        break
                    except queue.Empty:
                        if not any(t.is_alive() for t in self._threads) and q.empty():
                            raise RuntimeError(f"batch loader threads exited before batch {i}"
                                               ) from None
                with lock:
                    slots.pop(i, None)
                window.release()
                if exc is not None:
                    raise exc
                yield value
        finally:
            self.close()

    def close(self) -> None:
        """Stop and join the worker threads (also runs when iteration ends or breaks)."""
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads = []
