"""Messy annotation files: every source either repairs (and counts) or names the problem.

The captions stage is the one place ids are made trustworthy: the text cache is
keyed by caption id and the image cache by image id, so a duplicate that slips
through used to train fine and then crash ``evaluate`` with a shape error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from cliptune.config.load import load_config
from cliptune.data.caches.text import load_text_cache
from cliptune.data.sources import captions as cap
from cliptune.data.sources import formats as fmt
from cliptune.reporting.data_report import render_markdown, split_report

VARIANTS = {"baseline": {}}
# These tests read whole source splits; the selection holdout is tested elsewhere.
NO_HOLDOUT = {"split": "val"}


def coco_file(root: Path, images: list, annotations: list, folder="train2014") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / folder).mkdir(exist_ok=True)
    path = cap.annotation_file(root, folder)
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def coco_spec(root: Path) -> dict:
    ds = load_config({"dataset": {"name": "m", "source": "coco", "root": str(root),
                                  "selection": NO_HOLDOUT},
                      "variants": VARIANTS})["dataset"]
    return cap.split_spec(ds, "train")


IMAGES = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"},
          {"id": 3, "file_name": "c.jpg"},
          {"id": 1, "file_name": "a.jpg"},  # the same image entry listed twice
          {"id": 9, "file_name": "b.jpg"}]  # b.jpg again under another id


def ann(i, image, text):
    return {"id": i, "image_id": image, "caption": text}


def test_coco_duplicate_ids_empty_captions_and_repeated_images(tmp_path):
    coco_file(tmp_path, IMAGES, [
        ann(10, 1, "a dog"), ann(10, 1, "a dog"),  # one annotation listed twice
        ann(11, 1, "a dog on grass"), ann(11, 2, "a red bus"),  # two captions share id 11
        ann(12, 2, "   "), ann(13, 3, ""), ann(14, 3, None),  # c.jpg: only empty captions
        ann(15, 9, "a bus again"),  # b.jpg under its second id
    ])
    out = tmp_path / "train.parquet"
    df = cap.build_split_captions(coco_spec(tmp_path), out, tmp_path / "train.source.json")
    assert df["caption_id"].is_unique and len(df) == 4
    assert set(df["caption"]) == {"a dog", "a dog on grass", "a red bus", "a bus again"}
    assert df.groupby("file_name")["image_id"].nunique().max() == 1  # b.jpg is one image
    assert set(df.loc[df["file_name"] == "train2014/b.jpg", "image_id"]) == {2}
    assert df.loc[df["caption"] == "a dog on grass", "caption_id"].item() == 11  # first keeps
    info = json.loads((tmp_path / "train.source.json").read_text())
    assert {k: v for k, v in info["cleaning"].items() if k != "examples"} == {
        "images_merged": 1, "empty_captions_dropped": 3, "repeated_captions_dropped": 1,
        "caption_ids_reassigned": 1}
    assert info["cleaning"]["examples"]["caption_ids_reassigned"] == [11]
    assert info["images_without_captions"] == ["train2014/c.jpg"]
    # What evaluate needs: the text cache lines up with the captions table.
    text = _fake_text_cache(tmp_path / "t.safetensors", pd.read_parquet(out))
    assert load_text_cache(text, pd.read_parquet(out)).shape[0] == len(df)
    # ...and the ids are deterministic across runs.
    again = cap.build_split_captions(coco_spec(tmp_path), tmp_path / "again.parquet")
    assert again.equals(df)


def _fake_text_cache(path: Path, captions: pd.DataFrame) -> Path:
    ids = captions["caption_id"].to_numpy(np.int64, copy=True)
    save_file({"embeddings": torch.randn(len(ids), 4), "caption_id": torch.from_numpy(ids)},
              str(path))
    return path


def test_text_cache_refuses_a_table_with_duplicate_ids(tmp_path):
    caps = pd.DataFrame({"caption_id": [1, 1, 2], "caption": ["a", "b", "c"]})
    path = _fake_text_cache(tmp_path / "t.safetensors", caps)
    with pytest.raises(RuntimeError, match="duplicate caption ids.*--forcerun captions"):
        load_text_cache(path, caps)


@pytest.mark.parametrize("images,annotations,message", [
    ([{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "z.jpg"}], [ann(1, 1, "x")],
     "image id 1 is listed for a.jpg and z.jpg"),
    ([{"id": 1, "file_name": "a.jpg"}], [ann(7, 1, 42)], "annotation 7 is int 42, not a string"),
    ([{"id": 1, "file_name": "a.jpg"}], [{"id": 7, "image_id": 1}],
     r"annotations\[0\] needs 'id', 'image_id' and 'caption'"),
])
def test_coco_problems_that_cannot_be_repaired_are_named(tmp_path, images, annotations,
                                                           message):
    coco_file(tmp_path, images, annotations)
    with pytest.raises(fmt.DatasetFormatError, match=message):
        cap.read_split(coco_spec(tmp_path))


# --------------------------------------------------------------------------- Karpathy


def karpathy(path: Path, images: list) -> dict:
    path.write_text(json.dumps({"images": images}))
    return load_config({"dataset": {"name": "k", "source": "flickr30k", "root": str(path.parent),
                                    "annotations": str(path)}, "variants": VARIANTS})["dataset"]


def kimg(imgid, split, sentences, filename=None):
    return {"imgid": imgid, "filename": filename or f"{imgid}.jpg", "split": split,
            "sentences": [{"raw": t, "sentid": s} for s, t in sentences]}


def test_karpathy_image_listed_twice_and_shared_sentids(tmp_path):
    ds = karpathy(tmp_path / "k.json", [
        kimg(1, "train", [(10, "one"), (11, "two")]),
        kimg(1, "train", [(10, "one"), (11, "two")]),  # the whole entry repeated
        kimg(2, "train", [(11, "three"), (12, " \t")]),  # sentid 11 reused; blank caption
        kimg(3, "val", [(30, "val")]), kimg(4, "test", [(40, "test")]),
    ])
    train, no_cap, _, cleaning = cap.read_split(cap.split_spec(ds, "train"))
    assert sorted(train["caption"]) == ["one", "three", "two"] and train["caption_id"].is_unique
    assert (cleaning["repeated_captions_dropped"], cleaning["caption_ids_reassigned"],
            cleaning["empty_captions_dropped"]) == (2, 1, 1)
    assert no_cap == []


def test_karpathy_image_in_two_splits_and_non_string_caption(tmp_path):
    ds = karpathy(tmp_path / "k.json", [kimg(1, "train", [(1, "a")]),
                                        kimg(1, "test", [(2, "b")])])
    with pytest.raises(fmt.DatasetFormatError, match="1.jpg in test, train"):
        cap.read_split(cap.split_spec(ds, "train"))
    ds = karpathy(tmp_path / "k.json", [kimg(1, "train", [(1, ["a", "list"])])])
    with pytest.raises(fmt.DatasetFormatError, match=r"sentence 1 is list .* not a string"):
        cap.read_split(cap.split_spec(ds, "train"))


def test_karpathy_one_id_for_two_files_is_an_error(tmp_path):
    ds = karpathy(tmp_path / "k.json", [kimg(1, "train", [(1, "a")]),
                                        kimg(1, "train", [(2, "b")], filename="other.jpg")])
    with pytest.raises(ValueError, match="image id.*name more than one file.*1.jpg, other.jpg"):
        cap.read_split(cap.split_spec(ds, "train"))


# --------------------------------------------------------------------------- Flickr30k CSV


def test_flickr_csv_repeated_rows(tmp_path):
    lines = ["image_name| comment_number| comment"]
    lines += [f"{i}.jpg| 0| caption {i}" for i in range(6)]
    lines += ["0.jpg| 0| caption 0",  # the same row twice
              "1.jpg| 0| a different caption numbered 0 again",  # comment_number reused
              "2.jpg| 1|   "]  # blank comment
    path = tmp_path / "results.csv"
    path.write_text("\n".join(lines) + "\n")
    ds = load_config({"dataset": {"name": "f", "source": "flickr30k", "root": str(tmp_path),
                                  "annotations": str(path),
                                  "holdout": {"val": 1, "test": 1}},
                      "variants": VARIANTS})["dataset"]
    parts = [cap.read_split(cap.split_spec(ds, s)) for s in ("train", "val", "test")]
    rows = pd.concat([p.captions for p in parts])
    assert len(rows) == 7 and all(p.captions["caption_id"].is_unique for p in parts)
    total = {k: sum(p.cleaning[k] for p in parts) for k in
             ("repeated_captions_dropped", "caption_ids_reassigned", "empty_captions_dropped")}
    assert total == {"repeated_captions_dropped": 1, "caption_ids_reassigned": 1,
                     "empty_captions_dropped": 1}


# --------------------------------------------------------------------------- user formats


def test_user_json_image_in_two_splits_and_non_string_caption(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"splits": {
        "train": [{"image_path": "a.jpg", "caption": "x"}],
        "val": [{"image_path": "a.jpg", "caption": "y"}]}}))
    ds = load_config({"dataset": {"name": "u", "source": "json", "annotations": str(path),
                                  "selection": NO_HOLDOUT},
                      "variants": VARIANTS})["dataset"]
    with pytest.raises(fmt.DatasetFormatError, match="a.jpg in train, val"):
        cap.read_split(cap.split_spec(ds, "val"))
    path.write_text(json.dumps({"splits": {"train": [{"image_path": "a.jpg", "caption": 3}]}}))
    with pytest.raises(fmt.DatasetFormatError, match=r"splits.train\[0\] caption 0 is int 3"):
        cap.read_split(cap.split_spec(ds, "train"))


def test_table_image_in_two_splits_and_numeric_captions(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"image": ["a.jpg", "a.jpg", "b.jpg"], "caption": ["x", "y", " "],
                  "split": ["train", "val", "train"]}).to_csv(path, index=False)
    ds = load_config({"dataset": {"name": "t", "source": "table", "annotations": str(path),
                                  "selection": NO_HOLDOUT},
                      "variants": VARIANTS})["dataset"]
    with pytest.raises(fmt.DatasetFormatError, match="a.jpg in train, val"):
        cap.read_split(cap.split_spec(ds, "train"))
    path = tmp_path / "t.parquet"
    pd.DataFrame({"image": ["a.jpg", "b.jpg"], "caption": [1.5, 2.0],
                  "split": ["train", "train"]}).to_parquet(path)
    ds = load_config({"dataset": {"name": "t", "source": "table", "annotations": str(path),
                                  "selection": NO_HOLDOUT},
                      "variants": VARIANTS})["dataset"]
    with pytest.raises(fmt.DatasetFormatError, match=r"row 0 \('caption'\) is float 1.5"):
        cap.read_split(cap.split_spec(ds, "train"))


def test_table_repeated_image_rows_are_several_captions_and_blank_ones_are_dropped(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"image": ["a.jpg", "a.jpg", "b.jpg", "c.jpg"],
                  "caption": ["x", "x", "\t", "z"],
                  "split": ["train"] * 4}).to_csv(path, index=False)
    ds = load_config({"dataset": {"name": "t", "source": "table", "annotations": str(path),
                                  "selection": NO_HOLDOUT},
                      "variants": VARIANTS})["dataset"]
    train, no_cap, _, cleaning = cap.read_split(cap.split_spec(ds, "train"))
    # Two rows of one image are two captions (a verbatim repeat is counted by the report).
    assert train.groupby("file_name").size().to_dict() == {"a.jpg": 2, "c.jpg": 1}
    assert no_cap == ["b.jpg"] and cleaning["empty_captions_dropped"] == 1


# --------------------------------------------------------------------------- data report


def test_data_report_shows_every_repair():
    caps = pd.DataFrame({"image_id": [1], "caption_id": [1], "caption": ["a"],
                         "file_name": ["a.jpg"], "split": ["train"]})
    index = pd.DataFrame({"row": [0], "image_id": [1], "file_name": ["a.jpg"], "ok": [True],
                          "problem": [""]})
    cleaning = {"images_merged": 1, "empty_captions_dropped": 2, "repeated_captions_dropped": 0,
                "caption_ids_reassigned": 3,
                "examples": {"caption_ids_reassigned": [11], "images_merged": ["b.jpg"],
                             "empty_caption_images": ["c.jpg"]}}
    source = {"source": "coco", "source_splits": ["train"], "images_in_source": 1,
              "subset": {"images": None}, "images_without_captions": [],
              "selection_holdout": None, "cleaning": cleaning, "notes": []}
    r = split_report(caps, index, source)
    assert r["empty_captions"] == 2 and r["empty_caption_images"] == ["c.jpg"]
    md = render_markdown({"dataset": "d", "source": "coco", "splits": {"train": r},
                          "images_in_two_splits": {}})
    assert "given fresh ids: 3 (e.g. 11)" in md and "merged: 1 (e.g. b.jpg)" in md
    assert "empty or whitespace-only captions excluded: 2" in md
    assert "listed twice" not in md  # a repair that did not happen is not mentioned


def test_folder_images_sharing_a_caption_file_are_named(tmp_path):
    for name in ("train/a.jpg", "train/a.png", "train/b.jpg", "val/c.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).with_suffix(".txt").write_text("a caption\n")
    ds = load_config({"dataset": {"name": "f", "source": "folder", "root": str(tmp_path),
                                  "selection": NO_HOLDOUT}, "variants": VARIANTS})["dataset"]
    with pytest.raises(fmt.DatasetFormatError, match="train/a.jpg and train/a.png"):
        cap.read_split(cap.split_spec(ds, "train"))
    (tmp_path / "train/a.png").unlink()
    assert len(cap.read_split(cap.split_spec(ds, "train")).captions) == 2
