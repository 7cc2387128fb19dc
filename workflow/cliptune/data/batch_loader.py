"""Prefetching batch iterator over planned index batches, and batched uint8 augmentation.

A torch DataLoader calls ``__getitem__`` once per sample in Python and collates
afterwards; with the image cache a whole batch is one fancy-index read of a
memory map, so the only thing left to hide is that read (and the host->device
copy). ``BatchLoader`` runs ``fetch(rows)`` for the next few planned batches
in background threads (NumPy copies and torch ops release the GIL), pins the
result when training on CUDA, and yields batches in plan order. Worker errors
are re-raised in the consumer; closing or abandoning the iterator stops them.
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


def random_crop_flip(images: torch.Tensor, size: int, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Random ``size``×``size`` crop (and horizontal flip) of every image of a uint8 NHWC batch.

    Two batched gathers, no per-sample Python, on whatever device ``images``
    lives: whole rows first (contiguous copies), then each image's columns as
    byte offsets within its rows. The cache is stored a little larger than the
    training size so crops have room.
    """
    if images.ndim != 4:
        raise ValueError(f"expected an N×H×W×C batch, got shape {tuple(images.shape)}")
    n, h, w, c = images.shape
    if size > min(h, w):
        raise ValueError(f"crop size {size} is larger than the cached images ({h}×{w}); "
                         "build the image cache at least at the training size")
    dev = images.device
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    ar = torch.arange(size)
    rows = images[torch.arange(n, device=dev)[:, None], (top[:, None] + ar).to(dev)]
    pix = left[:, None] + ar  # n × size source columns
    if flip:
        flipped = torch.rand(n, generator=generator) < 0.5
        pix = torch.where(flipped[:, None], pix.flip(1), pix)
    byte = (pix[:, :, None] * c + torch.arange(c)).reshape(n, 1, size * c).to(dev)
    out = torch.gather(rows.reshape(n, size, w * c), 2, byte.expand(n, size, size * c))
    return out.view(n, size, size, c)


def normalize_nhwc(images: torch.Tensor, mean, std, device=None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 NHWC -> float ``(x / 255 - mean) / std`` as an NCHW channels_last view.

    Stays in NHWC with the per-channel constants tiled along each image row, so
    the fused multiply-add runs over long contiguous rows. ``out`` (a reused
    float NHWC buffer) avoids faulting in fresh pages for every batch, which on
    a CPU costs more than the arithmetic.
    """
    x = images.to(device or images.device, non_blocking=True)
    n, h, w, c = x.shape
    if out is None:
        out = torch.empty((n, h, w, c), dtype=torch.float32, device=x.device)
    elif out.shape != x.shape or not out.is_contiguous():
        raise ValueError(f"out buffer {tuple(out.shape)} does not fit batch {tuple(x.shape)}")
    std_t = torch.as_tensor(std, dtype=out.dtype, device=out.device)
    scale = (1.0 / (255.0 * std_t)).repeat(w)
    shift = (-torch.as_tensor(mean, dtype=out.dtype, device=out.device) / std_t).repeat(w)
    rows = out.copy_(x).view(n, h, w * c)
    torch.addcmul(shift, rows, scale, out=rows)
    return out.permute(0, 3, 1, 2)
