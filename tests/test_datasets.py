"""Dataset sources: every caption format, subsets, config checks, image loading, rules.

Fixtures are generated here (no network): tiny images in every colour mode,
broken files of every kind, and caption files in each supported format.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cliptune.config.load import ConfigError, load_config
from cliptune.data.caches.images import TooManyBadImagesError, _decode, build_image_cache, load_rgb
from cliptune.data.caches.keys import captions_paths
from cliptune.data.fetch.coco import (
    fetch_archive,
    marker_path,
    needed_archives,
    placement_hint,
)
from cliptune.data.fetch.http import COCO2014_FILES, DownloadError
from cliptune.data.sources import captions as cap
from cliptune.data.sources import formats as fmt

VARIANTS = {"baseline": {}}
# Format tests read whole source splits (tests/test_selection_split.py covers the holdout).
WHOLE = {"split": "val"}
UNICODE = "Ein Café am Fluss, 東京の夜 🚲"

# --------------------------------------------------------------------------- image fixtures


def _two_tone(w=60, h=40) -> Image.Image:
    """Left half red, right half blue: orientation and channel order are visible."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kw)
    return buf.getvalue()


def _corrupt_jpeg() -> bytes:
    """Valid header, mangled Huffman table: identified as JPEG, fails to decode."""
    rng = np.random.default_rng(0)
    data = bytearray(_jpeg(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))))
    i = data.find(b"\xff\xc4")
    data[i + 5:i + 25] = b"\xff" * 20
    return bytes(data)


def good_images() -> dict[str, bytes]:
    base = _two_tone()
    rgba = np.array(base.convert("RGBA"))
    rgba[:, :, 3] = 0  # fully transparent: must come out white, not black
    pal = base.convert("P")
    exif = base.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    return {
        "rgb.jpg": _jpeg(base),
        "cmyk.jpg": _jpeg(base.convert("CMYK")),
        "gray.png": _png(base.convert("L")),
        "palette.png": _png(pal),
        "rgba.png": _png(Image.fromarray(rgba)),
        "rotated.jpg": _jpeg(base, exif=exif),
    }


def bad_images() -> dict[str, bytes]:
    whole = _jpeg(_two_tone())
    return {
        "corrupt.jpg": _corrupt_jpeg(),
        "truncated.jpg": whole[: len(whole) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"this is a text file with an image suffix\n",
    }


BAD_REASONS = {"corrupt.jpg": "unreadable", "truncated.jpg": "truncated",
               "empty.jpg": "zero-size", "notes.jpg": "not an image", "absent.jpg": "missing"}


def write_images(folder: Path, names: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in names.items():
        (folder / name).write_bytes(data)


# --------------------------------------------------------------------------- image loading


@pytest.mark.parametrize("name", sorted(good_images()))
def test_every_colour_mode_loads_as_rgb(tmp_path, name):
    write_images(tmp_path, good_images())
    pixels = load_rgb(tmp_path / name, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    if name == "rgba.png":
        assert pixels.min() > 245  # transparent composited over white
    elif name == "gray.png":
        assert (pixels[..., 0] == pixels[..., 1]).all()
    elif name == "rotated.jpg":
        # 60x40 red|blue turned upright: red on top, blue at the bottom.
        assert pixels[2, 16, 0] > 200 and pixels[2, 16, 2] < 60
        assert pixels[29, 16, 2] > 200 and pixels[29, 16, 0] < 60
    else:
        assert pixels[16, 2, 0] > 200 and pixels[16, 2, 2] < 60
        assert pixels[16, 29, 2] > 200 and pixels[16, 29, 0] < 60


def test_problem_images_get_their_reason(tmp_path):
    write_images(tmp_path, bad_images())
    for name, reason in BAD_REASONS.items():
        _, pixels, problem = _decode((0, str(tmp_path / name), 32))
        assert pixels is None
        assert problem.split(":")[0] == reason, (name, problem)


def test_image_cache_excludes_bad_images_and_enforces_fraction(tmp_path):
    write_images(tmp_path / "imgs", {**good_images(), **bad_images()})
    names = sorted(good_images()) + sorted(BAD_REASONS)
    caps = pd.DataFrame({"image_id": range(len(names)), "file_name": [f"imgs/{n}" for n in names]})
    caps.to_parquet(tmp_path / "caps.parquet")
    args = (tmp_path / "caps.parquet", tmp_path, 16, tmp_path / "a.npy", tmp_path / "a.parquet")
    index = build_image_cache(*args, workers=1, max_bad_fraction=0.5)
    bad = index[~index["ok"]].set_index("file_name")["problem"]
    assert {Path(f).name: p.split(":")[0] for f, p in bad.items()} == BAD_REASONS
    assert index["ok"].sum() == len(good_images())
    with pytest.raises(TooManyBadImagesError, match="max_bad_image_fraction"):
        build_image_cache(*args, workers=1, max_bad_fraction=0.1)


# --------------------------------------------------------------------------- format fixtures


def karpathy_coco(path: Path) -> Path:
    def img(cocoid, split, folder, sentences):
        return {"cocoid": cocoid, "imgid": cocoid, "split": split, "filepath": folder,
                "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
                "sentences": [{"raw": t, "sentid": cocoid * 10 + k, "tokens": t.split()}
                              for k, t in enumerate(sentences)]}

    data = {"dataset": "coco", "images": [
        img(1, "train", "train2014", ["a dog", "A  dog\nrunning"]),
        img(2, "restval", "val2014", ["a cat"]),
        img(3, "val", "val2014", ["a bird", UNICODE]),
        img(4, "test", "val2014", ["a boat"]),
        img(5, "train", "train2014", []),  # image with no caption
    ]}
    path.write_text(json.dumps(data))
    return path


def test_karpathy_coco_splits_and_restval(tmp_path):
    ann = karpathy_coco(tmp_path / "dataset_coco.json")
    ds = load_config({"dataset": {"name": "k", "source": "karpathy_coco", "root": str(tmp_path),
                                  "annotations": str(ann)}, "variants": VARIANTS})["dataset"]
    assert ds["splits"] == {"train": "train", "val": "val", "test": "test"}
    train, no_cap, _, _ = cap.read_split(cap.split_spec(ds, "train"))
    assert list(train.columns) == cap.COLUMNS
    assert sorted(train["image_id"].unique()) == [1, 2]  # restval joins train
    assert set(train["file_name"]) == {"train2014/COCO_train2014_000000000001.jpg",
                                       "val2014/COCO_val2014_000000000002.jpg"}
    assert "A dog running" in set(train["caption"])  # whitespace collapsed
    assert no_cap == ["train2014/COCO_train2014_000000000005.jpg"]
    assert (train["split"] == "train").all()
    ds["use_restval"] = False
    train, _, _, _ = cap.read_split(cap.split_spec(ds, "train"))
    assert sorted(train["image_id"].unique()) == [1]
    val, _, _, _ = cap.read_split(cap.split_spec(ds, "val"))
    assert UNICODE in set(val["caption"]) and val["caption_id"].tolist() == [30, 31]
    test, _, _, _ = cap.read_split(cap.split_spec(ds, "test"))
    assert test["image_id"].tolist() == [4]


def test_flickr30k_karpathy_json(tmp_path):
    data = {"dataset": "flickr30k", "images": [
        {"imgid": i, "filename": f"{1000 + i}.jpg", "split": s, "sentids": [i],
         "sentences": [{"raw": f"caption {i}", "sentid": i, "imgid": i}]}
        for i, s in enumerate(["train", "train", "val", "test"])]}
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(data))
    ds = load_config({"dataset": {"name": "f", "source": "flickr30k", "root": str(tmp_path)},
                      "variants": VARIANTS})["dataset"]
    assert ds["annotations"] == str(tmp_path / "dataset_flickr30k.json")
    train, _, _, _ = cap.read_split(cap.split_spec(ds, "train"))
    assert train["file_name"].tolist() == ["1000.jpg", "1001.jpg"]
    assert cap.read_split(cap.split_spec(ds, "test"))[0]["image_id"].tolist() == [3]


def flickr_results_csv(path: Path, n_images=12) -> Path:
    lines = ["image_name| comment_number| comment"]
    for i in range(n_images):
        for k in range(3):
            lines.append(f"{2000 + i}.jpg| {k}| Picture {i} caption {k} .")
    lines.append("2000.jpg| 3 A glued comment number")  # the known malformed row
    lines.append(f"2001.jpg| 3| {UNICODE}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_flickr_results_csv_with_seeded_holdout(tmp_path):
    csv = flickr_results_csv(tmp_path / "results.csv")
    raw = {"dataset": {"name": "f", "source": "flickr30k", "root": str(tmp_path),
                       "annotations": str(csv), "holdout": {"val": 2, "test": 3, "seed": 4}},
           "variants": VARIANTS}
    ds = load_config(raw)["dataset"]
    parts = {s: cap.read_split(cap.split_spec(ds, s))[0] for s in ("train", "val", "test")}
    images = {s: set(df["file_name"]) for s, df in parts.items()}
    assert [len(images[s]) for s in ("train", "val", "test")] == [7, 2, 3]
    assert not (images["train"] & images["val"]) and not (images["val"] & images["test"])
    everything = pd.concat(parts.values())
    assert len(everything) == 12 * 3 + 2
    assert "A glued comment number" in set(everything["caption"])
    assert UNICODE in set(everything["caption"])
    assert (everything.loc[everything["file_name"] == "2005.jpg", "image_id"] == 2005).all()
    again = cap.read_split(cap.split_spec(load_config(raw)["dataset"], "val"))[0]
    assert set(again["file_name"]) == images["val"]  # deterministic
    raw["dataset"]["holdout"]["seed"] = 5
    other = cap.read_split(cap.split_spec(load_config(raw)["dataset"], "test"))[0]
    assert set(other["file_name"]) != images["test"]


def test_holdout_larger_than_dataset_fails_clearly(tmp_path):
    csv = flickr_results_csv(tmp_path / "results.csv", n_images=3)
    ds = load_config({"dataset": {"name": "f", "source": "flickr30k", "root": str(tmp_path),
                                  "annotations": str(csv)}, "variants": VARIANTS})["dataset"]
    with pytest.raises(fmt.DatasetFormatError, match="lower dataset.holdout"):
        cap.read_split(cap.split_spec(ds, "train"))


def user_json(path: Path) -> Path:
    data = {"splits": {
        "train": [
            {"image_path": "img/a.jpg", "caption": "first", "id": 11},
            {"image_path": "img/a.jpg", "caption": UNICODE, "id": 12},
            {"image_path": "img/b.jpg", "caption": "", "id": 13},  # empty caption
            {"image_path": "img/c.jpg", "id": 14},  # no caption
        ],
        "val": [{"image_path": "/abs/d.jpg", "captions": ["one", "two"]}],
    }}
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_user_json(tmp_path):
    ann = user_json(tmp_path / "data.json")
    ds = load_config({"dataset": {"name": "u", "source": "json", "annotations": str(ann),
                                  "selection": WHOLE},
                      "variants": VARIANTS})["dataset"]
    assert ds["root"] == str(tmp_path)  # image paths are relative to the JSON's folder
    train, no_cap, _, cleaning = cap.read_split(cap.split_spec(ds, "train"))
    assert sorted(train["caption_id"]) == [11, 12]  # the empty caption is excluded...
    assert set(train["caption"]) == {"first", UNICODE}
    assert no_cap == ["img/b.jpg", "img/c.jpg"]  # ...so img/b.jpg has no caption left
    assert cleaning["empty_captions_dropped"] == 1
    assert train.groupby("file_name")["image_id"].nunique().max() == 1
    val, _, _, _ = cap.read_split(cap.split_spec(ds, "val"))
    assert val["file_name"].tolist() == ["/abs/d.jpg", "/abs/d.jpg"]  # absolute kept
    assert Path(ds["root"]) / "/abs/d.jpg" == Path("/abs/d.jpg")  # what image_cache joins


def folder_dataset(root: Path) -> Path:
    """train/ with every good and bad image kind; val/ with two images."""
    write_images(root / "train", {**good_images(), **bad_images()})
    for name in good_images():
        Path(root / "train" / name).with_suffix(".txt").write_text(
            f"a photo called {name}\n\nsecond caption of {name}\n", encoding="utf-8")
    for name in bad_images():
        Path(root / "train" / name).with_suffix(".txt").write_text(f"broken {name}\n")
    (root / "train" / "gray.txt").write_text(f"{UNICODE}\n\n", encoding="utf-8")
    (root / "train" / "rgb.txt").unlink()  # an image without captions
    (root / "train" / "orphan.txt").write_text("a caption without its image\n")
    write_images(root / "val" / "sub", {"v1.jpg": _jpeg(_two_tone()), "v2.png":
                                        _png(_two_tone())})
    for v in ("v1", "v2"):
        (root / "val" / "sub" / f"{v}.txt").write_text(f"val image {v}\n")
    return root


def test_folder_with_sidecar_captions(tmp_path):
    root = folder_dataset(tmp_path / "ds")
    ds = load_config({"dataset": {"name": "d", "source": "folder", "root": str(root),
                                  "selection": WHOLE},
                      "variants": VARIANTS})["dataset"]
    train, no_cap, notes, _ = cap.read_split(cap.split_spec(ds, "train"))
    assert no_cap == ["train/rgb.jpg"]
    assert "" not in set(train["caption"])  # blank lines are not captions
    assert train.groupby("file_name").size()["train/gray.png"] == 1
    assert UNICODE in set(train["caption"])
    assert any("orphan.txt" in n for n in notes)
    val, _, _, _ = cap.read_split(cap.split_spec(ds, "val"))
    assert sorted(val["file_name"]) == ["val/sub/v1.jpg", "val/sub/v2.png"]
    # Ids depend on the path only, so they are stable across runs and splits.
    assert cap.read_split(cap.split_spec(ds, "val"))[0].equals(val)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_formats(tmp_path, suffix):
    df = pd.DataFrame({
        "Image": ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        "text": ["one", UNICODE, "bee", None, "dee"],
        "split": ["train", "train", "train", "train", "val"],
    })
    path = tmp_path / f"t{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    ds = load_config({"dataset": {"name": "t", "source": "table", "annotations": str(path),
                                  "selection": WHOLE},
                      "variants": VARIANTS})["dataset"]
    train, no_cap, _, _ = cap.read_split(cap.split_spec(ds, "train"))
    assert sorted(train["caption"]) == sorted(["one", UNICODE, "bee"])
    assert no_cap == ["c.jpg"]
    assert cap.read_split(cap.split_spec(ds, "val"))[0]["file_name"].tolist() == ["d.jpg"]


def test_table_named_columns_and_missing_column(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"pic": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
                  "words": ["w1", "w2", "w3", "w4"]}).to_csv(path, index=False)
    raw = {"dataset": {"name": "t", "source": "table", "annotations": str(path),
                       "selection": WHOLE,
                       "holdout": {"val": 1, "test": 1}}, "variants": VARIANTS}
    ds = load_config(raw)["dataset"]
    with pytest.raises(fmt.DatasetFormatError, match="dataset.columns.image"):
        cap.read_split(cap.split_spec(ds, "train"))
    raw["dataset"]["columns"] = {"image": "pic", "caption": "words"}
    ds = load_config(raw)["dataset"]
    train, _, _, _ = cap.read_split(cap.split_spec(ds, "train"))  # no split column: holdout
    assert len(train) == 2


def test_wrong_split_name_is_named(tmp_path):
    ann = user_json(tmp_path / "data.json")
    ds = load_config({"dataset": {"name": "u", "source": "json", "annotations": str(ann),
                                  "splits": {"train": "training", "val": "val"}},
                      "variants": VARIANTS})["dataset"]
    with pytest.raises(ValueError, match=r"dataset.splits.train"):
        cap.read_split(cap.split_spec(ds, "train"))


# --------------------------------------------------------------------------- subset


def test_subset_first_and_seeded_random():
    names = pd.Series([f"img{i:03d}.jpg" for i in range(50) for _ in range(2)])
    first = cap.subset_images(names, 5, "first", 0, "train")
    assert sorted(set(names[first])) == [f"img{i:03d}.jpg" for i in range(5)]
    a = set(names[cap.subset_images(names, 10, "random", 0, "train")])
    shuffled = names.sample(frac=1, random_state=1).reset_index(drop=True)
    assert set(shuffled[cap.subset_images(shuffled, 10, "random", 0, "train")]) == a
    assert len(a) == 10 and a != set(names[cap.subset_images(names, 10, "random", 1, "train")])
    assert a != set(names[cap.subset_images(names, 10, "random", 0, "val")])
    assert cap.subset_images(names, 500, "random", 0, "train").all()


def test_subset_applies_before_caching_and_is_recorded(tmp_path):
    root = folder_dataset(tmp_path / "ds")
    ds = load_config({"dataset": {"name": "d", "source": "folder", "root": str(root),
                                  "selection": WHOLE,
                                  "subset": {"images": {"train": 3}, "mode": "first"}},
                      "variants": VARIANTS})["dataset"]
    spec = cap.split_spec(ds, "train")
    out = cap.build_split_captions(spec, tmp_path / "c.parquet", tmp_path / "c.source.json")
    assert out["file_name"].nunique() == 3
    assert pd.read_parquet(tmp_path / "c.parquet")["file_name"].nunique() == 3
    info = json.loads((tmp_path / "c.source.json").read_text())
    assert info["subset"]["images_kept"] == 3 and info["images_in_source"] == 9
    assert info["images_without_captions"] == ["train/rgb.jpg"]
    assert cap.split_spec(ds, "val")["subset"]["images"] is None


# --------------------------------------------------------------------------- config checks


@pytest.mark.parametrize("dataset, message", [
    ({"source": "folder"}, "dataset.root is required"),
    ({"source": "json"}, "dataset.annotations is required"),
    ({"source": "table", "root": "x"}, "dataset.annotations is required"),
    ({"source": "folder", "root": "x", "download": True}, "downloads COCO 2014 only"),
    ({"source": "coco", "download": True, "splits": {"train": "train2017"}},
     "cannot fetch"),
    ({"source": "folder", "root": "x", "subset": {"images": {"tain": 3}}}, "'tain'"),
    ({"source": "karpathy_coco"}, "train2014/ and val2014/"),
])
def test_bad_dataset_settings_name_the_fix(dataset, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"dataset": {"name": "x", **dataset}, "variants": VARIANTS})


def test_download_defaults_and_checks(tmp_path):
    ds = load_config({"dataset": {"name": "c", "source": "coco", "download": True},
                      "variants": VARIANTS})["dataset"]
    assert ds["root"] == "resources/coco2014"
    assert needed_archives(ds) == ["annotations_trainval2014.zip", "train2014.zip",
                                   "val2014.zip"]
    cap.check_sources(ds)  # nothing exists yet, and that is fine: it will be downloaded
    assert cap.captions_inputs(ds, "val") == [
        str(marker_path("resources/coco2014", "annotations_trainval2014.zip")),
        str(marker_path("resources/coco2014", "val2014.zip"))]
    ds = load_config({"dataset": {"name": "k", "source": "karpathy_coco", "download": True},
                      "variants": VARIANTS})["dataset"]
    assert needed_archives(ds) == ["train2014.zip", "val2014.zip"]
    with pytest.raises(FileNotFoundError, match="caption_datasets.zip"):
        cap.check_sources(ds)  # Karpathy's JSON cannot be downloaded: it must be named


def test_check_sources_names_every_missing_piece(tmp_path):
    ds = load_config({"dataset": {"name": "d", "source": "folder", "root": str(tmp_path),
                                  "splits": {"train": "tr", "val": "va"}},
                      "variants": VARIANTS})["dataset"]
    with pytest.raises(FileNotFoundError) as err:
        cap.check_sources(ds)
    assert f"{tmp_path}/tr/" in str(err.value) and f"{tmp_path}/va/" in str(err.value)
    ds = load_config({"dataset": {"name": "c", "source": "coco", "root": str(tmp_path)},
                      "variants": VARIANTS})["dataset"]
    with pytest.raises(FileNotFoundError, match="captions_train2014.json"):
        cap.check_sources(ds)


def test_offline_download_says_what_to_place_where(tmp_path):
    ds = load_config({"dataset": {"name": "c", "source": "coco", "download": True,
                                  "root": str(tmp_path)}, "variants": VARIANTS})["dataset"]
    names = needed_archives(ds)
    hint = placement_hint(tmp_path, names, COCO2014_FILES)
    spec = {**COCO2014_FILES["val2014.zip"], "url": "http://127.0.0.1:9/val2014.zip"}
    with pytest.raises(DownloadError) as err:
        fetch_archive("val2014.zip", spec, tmp_path / "archives/val2014.zip", hint=hint,
                      retries=0)
    text = str(err.value)
    for name in names:
        assert f"{tmp_path}/archives/{name}" in text and COCO2014_FILES[name]["md5"] in text
    assert "dataset.download: false" in text


# --------------------------------------------------------------------------- rules


@pytest.fixture
def zip_server(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "served"))
    (tmp_path / "served").mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv, tmp_path / "served"
    srv.shutdown()
    srv.server_close()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_download_rules_fetch_verify_extract(zip_server, tmp_path, repo):
    """coco_archive -> coco_extract -> captions via Snakemake, from a local 'mirror'."""
    from conftest import snakemake, write_config

    from cliptune.demo.dataset import generate_demo_dataset

    srv, served = zip_server
    demo = tmp_path / "demo"
    generate_demo_dataset(demo, train_images=6, val_images=4, image_size=24)
    files = {}
    for name, members in {"annotations_trainval2014.zip": "annotations",
                          "train2014.zip": "train2014", "val2014.zip": "val2014"}.items():
        with zipfile.ZipFile(served / name, "w") as zf:
            for p in sorted((demo / members).iterdir()):
                zf.write(p, f"{members}/{p.name}")
        data = (served / name).read_bytes()
        files[name] = {"url": f"http://127.0.0.1:{srv.server_address[1]}/{name}",
                       "size": len(data), "md5": hashlib.md5(data).hexdigest()}
    work = tmp_path / "work"
    work.mkdir()
    cfg = {"dataset": {"name": "dl", "source": "coco", "download": True, "root": "coco",
                       "download_files": files, "selection": {"images": 1}},
           "variants": VARIANTS}
    write_config(work, cfg)
    target = captions_paths(load_config(cfg)["dataset"], "train")["captions"]
    snakemake(work, repo, target)
    caps = pd.read_parquet(work / target)
    # 6 train2014 images, one held out to select the model.
    assert caps["image_id"].nunique() == 5 and (work / "coco/train2014").is_dir()
    assert (work / "coco/.train2014.zip.complete").is_file()
    assert not (work / "coco/archives/train2014.zip").exists()  # temp() unless keep_archives
    assert not (work / "coco/.val2014.zip.complete").exists()  # only what was asked for


@pytest.mark.slow
def test_folder_dataset_through_captions_cache_and_report(tmp_path, repo):
    """A user folder dataset with every kind of bad image, through the real rules."""
    from conftest import snakemake, write_config

    folder_dataset(tmp_path / "mydata")
    write_config(tmp_path, {
        "dataset": {"name": "mine", "source": "folder", "root": "mydata", "selection": WHOLE,
                    "max_bad_image_fraction": 0.5, "samples": {"count": 4}},
        "image_size": 16, "image_cache": {"workers": 1}, "variants": VARIANTS})
    snakemake(tmp_path, repo, "results/mine/data_report.json", "results/mine/samples.png")
    report = json.loads((tmp_path / "results/mine/data_report.json").read_text())
    train = report["splits"]["train"]
    found = {Path(p["file_name"]).name: p["reason"] for p in train["problems"]}
    assert found == {k: v for k, v in BAD_REASONS.items() if k != "absent.jpg"}
    assert train["images_without_captions"] == 1 and train["usable_images"] == 5
    assert report["splits"]["val"]["images"] == 2
    assert (tmp_path / "results/mine/data_report.md").read_text().count("| truncated |") == 1
    assert (tmp_path / "results/mine/samples.png").stat().st_size > 5_000
