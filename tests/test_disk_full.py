"""A full disk while writing the image cache, a checkpoint or evaluation output: a clear
error naming the path and the space needed, no partial file left that a rerun would
trust, and a rerun after space is freed completes (cliptune.files.atomic.atomic_path).

The results folder sits on a small tmpfs mounted for the test; that needs root (the
sessions and CI run as root), else the tests skip and say why."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_pairs import load_train_val, tiny_variant

from cliptune.data.caches.images import build_image_cache, open_cache
from cliptune.files import integrity
from cliptune.files.atomic import DiskFullError, atomic_path, write_json


class SmallDisk(type(Path())):
    def grow(self, mb: int) -> None:
        """Free space by resizing the tmpfs to ``mb`` MB."""
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(self)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, unmounted after the test."""
    disk = SmallDisk(tmp_path / f"disk-{uuid.uuid4().hex[:6]}")
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


def test_image_cache_on_a_full_disk_names_path_and_size_then_reruns(small_disk, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(src / f"{i}.png")
    pd.DataFrame({"image_id": range(40), "file_name": [f"{i}.png" for i in range(40)]}
                 ).to_parquet(src / "caps.parquet")
    array, index = small_disk / "cache.npy", small_disk / "cache.index.parquet"
    with pytest.raises(DiskFullError) as err:  # 40 x 160 x 160 x 3 = 3.1 MB > 2 MB
        build_image_cache(src / "caps.parquet", src, 160, array, index, workers=1)
    assert str(array) in str(err.value) and "needs about 3.1 MB" in str(err.value)
    assert leftovers(small_disk) == []  # no temp file, no cache, no sidecar
    small_disk.grow(8)
    build_image_cache(src / "caps.parquet", src, 160, array, index, workers=1)
    pixels, _ = open_cache(array, index)  # verified against the producer's digest
    ref_arr, ref_idx = tmp_path / "ref.npy", tmp_path / "ref.index.parquet"
    build_image_cache(src / "caps.parquet", src, 160, ref_arr, ref_idx, workers=1)
    assert np.array_equal(pixels, np.load(ref_arr))


def test_checkpoint_save_on_a_full_disk_names_the_state_file_then_reruns(small_disk,
                                                                         tmp_path):
    from cliptune.training.trainer import train_variant

    pairs = load_train_val(tmp_path / "pairs", n_train=16, n_val=8)
    v = tiny_variant(epochs=1, batch_size=8, tensorboard=False)
    state = small_disk / "ckpt" / "state.pt"
    with pytest.raises(DiskFullError, match=rf"{state}: it needs more than"):
        train_variant(v, *pairs, small_disk / "out", state, show_progress=False)
    assert [n for n in leftovers(small_disk) if n.startswith(".") or n.endswith(".pt")] == []
    small_disk.grow(400)
    result = train_variant(v, *pairs, small_disk / "out", state, show_progress=False)
    ref = train_variant(v, *pairs, tmp_path / "out", tmp_path / "ckpt" / "state.pt",
                        show_progress=False)
    losses = [[row[k] for k in ("train_loss", "val_loss")] for row in result["history"]]
    assert losses == [[row[k] for k in ("train_loss", "val_loss")] for row in ref["history"]]
    a, b = (load_file(str(d / "out" / "model.safetensors")) for d in (small_disk, tmp_path))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_outputs_on_a_full_disk_leave_nothing_behind(small_disk):
    # Evaluation writes embeddings (safetensors, which reports a full disk without an
    # errno) and metrics.json through the same helper.
    emb = small_disk / "embeddings.safetensors"
    big = {"image": torch.randn(1024, 1024)}  # 4.2 MB
    with pytest.raises(DiskFullError, match=str(emb)), atomic_path(emb, seal=True) as tmp:
        save_file(big, str(tmp))
    metrics = small_disk / "metrics.json"
    with pytest.raises(DiskFullError, match=str(metrics)):
        write_json(metrics, {"rows": list(range(400_000))})
    assert leftovers(small_disk) == []
    small_disk.grow(16)
    with atomic_path(emb, seal=True) as tmp:
        save_file(big, str(tmp))
    integrity.verify(emb)
    write_json(metrics, {"r1": 0.5})
    assert leftovers(small_disk) == ["embeddings.safetensors", "embeddings.safetensors.sha256",
                                     "metrics.json"]


def test_a_failed_write_keeps_the_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"v": 1})
    with pytest.raises(ValueError), atomic_path(path) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise ValueError("writer died")
    assert path.read_text() == '{\n  "v": 1\n}\n'
    assert leftovers(tmp_path) == ["metrics.json"]


def test_a_reader_never_sees_a_half_written_cache(tmp_path):
    """Two runs sharing a cache: one rewrites it while the other reads it; every read is
    one whole version (rename is atomic), never a mix or a prefix."""
    path = tmp_path / "shared.npy"
    versions = [np.full(200_000, i, dtype=np.int64) for i in range(2)]
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, versions[0])
    writer = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, numpy as np; sys.path.insert(0, sys.argv[2]);"
            "from cliptune.files.atomic import atomic_path\n"
            "for i in range(60):\n"
            "    with atomic_path(sys.argv[1]) as tmp, open(tmp, 'wb') as f:\n"
            "        np.save(f, np.full(200_000, i % 2, dtype=np.int64))\n"),
         str(path), os.path.join(os.path.dirname(__file__), "..", "workflow")])
    reads = 0
    while writer.poll() is None or reads == 0:
        data = np.load(path)
        assert len(data) == 200_000 and (data == data[0]).all()
        reads += 1
    assert writer.returncode == 0 and reads > 1
