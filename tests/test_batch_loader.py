"""BatchLoader: planned batches in plan order, clean stop, worker errors re-raised."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

from cliptune.data.loading.batch_loader import BatchLoader, loader_settings


def _plan(n_batches=9, batch=4):
    rng = np.random.default_rng(0)
    rows = rng.permutation(n_batches * batch)
    return [rows[i * batch:(i + 1) * batch] for i in range(n_batches)]


def _slow_fetch(calls):
    def fetch(rows):
        calls.append(int(rows[0]))
        time.sleep(random.uniform(0, 0.01))  # finish out of order across threads
        return torch.from_numpy(rows * 10), rows.sum()
    return fetch


def _loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("batch-loader")]


@pytest.mark.parametrize("workers,prefetch", [(0, 0), (1, 1), (1, 3), (3, 4)])
def test_yields_exactly_the_planned_batches_in_order(workers, prefetch):
    plan = _plan()
    calls = []
    loader = BatchLoader(_slow_fetch(calls), plan, workers=workers, prefetch=prefetch)
    out = list(loader)
    assert len(out) == len(plan) == len(loader)
    for (images, total), rows in zip(out, plan, strict=True):
        assert torch.equal(images, torch.from_numpy(rows * 10)) and total == rows.sum()
    assert sorted(calls) == sorted(int(r[0]) for r in plan)  # each batch fetched once
    assert not _loader_threads()


def test_second_pass_repeats_the_plan():
    plan = _plan(5)
    loader = BatchLoader(_slow_fetch([]), plan, workers=2, prefetch=2)
    first = [t.sum().item() for t, _ in loader]
    assert first == [t.sum().item() for t, _ in loader]


def test_breaking_early_stops_the_threads_and_bounds_the_lookahead():
    plan = _plan(50)
    calls = []
    loader = BatchLoader(_slow_fetch(calls), plan, workers=2, prefetch=3)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    # The generator is closed when the loop is left: threads are joined.
    assert not _loader_threads()
    assert 2 <= len(calls) <= 2 + 3 + 2  # consumed + window + one in hand per thread


def test_worker_error_reaches_the_consumer_after_the_good_batches():
    plan = _plan(8)
    bad = int(plan[3][0])

    def fetch(rows):
        if int(rows[0]) == bad:
            raise OSError("disk went away")
        return rows

    got = []
    with pytest.raises(OSError, match="disk went away"):
        for rows in BatchLoader(fetch, plan, workers=2, prefetch=2):
            got.append(rows)
    assert [r.tolist() for r in got] == [p.tolist() for p in plan[:3]]
    assert not _loader_threads()


def test_inline_mode_raises_too():
    def fetch(rows):
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        list(BatchLoader(fetch, _plan(2), workers=0, prefetch=0))


def test_settings_follow_threads_and_device():
    cpu = loader_settings(2, "cpu")
    assert (cpu.workers, cpu.pin_memory) == (1, False) and cpu.prefetch >= 1
    gpu = loader_settings(16, "cuda")
    assert gpu.workers == 2 and gpu.pin_memory and gpu.prefetch >= gpu.workers
    with pytest.raises(ValueError):
        BatchLoader(lambda r: r, [], workers=-1)


def test_pairdata_fetch_through_the_loader_matches_direct_fetch():
    import pandas as pd

    from cliptune.data.loading.pairs import PairData

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    cap_rows = np.repeat(np.arange(12), 2)
    data = PairData(pixels, pd.DataFrame({"caption_id": np.arange(24)}), torch.randn(24, 5),
                    cap_rows, np.arange(12), np.arange(12) + 100)
    plan = [rng.permutation(24)[:6] for _ in range(4)]
    for (img, txt), rows in zip(BatchLoader(data.fetch, plan, workers=1, prefetch=2), plan,
                                strict=True):
        ref_img, ref_txt = data.fetch(rows)
        assert img.dtype == torch.uint8 and torch.equal(img, ref_img)
        assert torch.equal(txt, ref_txt)
