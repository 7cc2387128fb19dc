"""Data report contents and the samples grid, at function level (no Snakemake)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cliptune.reporting.data_report import build_data_report, split_report
from cliptune.reporting.samples import pick_samples, write_samples
from cliptune.reporting.vocabulary import vocabulary_report, word_counts


def _captions(split: str, rows: list[tuple[int, str]]) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [i for i, _ in rows],
        "caption_id": range(len(rows)),
        "caption": [t for _, t in rows],
        "file_name": [f"{split}/{i}.jpg" for i, _ in rows],
        "split": split,
    })


def _index(ids: list[int], split: str, problems: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame({
        "row": range(len(ids)),
        "image_id": ids,
        "file_name": [f"{split}/{i}.jpg" for i in ids],
        "ok": [i not in problems for i in ids],
        "problem": [problems.get(i, "") for i in ids],
    })


TRAIN = _captions("train", [
    (1, "A dog on grass"), (1, "a dog on grass "), (1, "Ein Café ☕"),  # within-image dup
    (2, "a red bus"), (3, "A red bus"),  # same text on two images
    (4, ""),  # empty caption
    (5, "one two three four five six"),
])
TRAIN_INDEX = _index([1, 2, 3, 4, 5], "train", {4: "truncated: OSError: Truncated File Read",
                                                5: "missing"})
SOURCE = {"source": "karpathy_coco", "source_splits": ["train", "restval"],
          "use_restval": True, "images_in_source": 6,
          "images_without_captions": ["train/6.jpg"], "notes": ["a note"],
          "subset": {"images": None, "mode": "random", "seed": 0, "images_kept": 5},
          "selection_holdout": None,
          "cleaning": {"images_merged": 0, "empty_captions_dropped": 0,
                       "repeated_captions_dropped": 0, "caption_ids_reassigned": 0,
                       "examples": {"images_merged": [], "empty_caption_images": [],
                                    "caption_ids_reassigned": []}}}


def test_split_report_counts_everything():
    r = split_report(TRAIN, TRAIN_INDEX, SOURCE)
    assert (r["images"], r["captions"], r["usable_images"], r["problem_images"]) == (5, 7, 3, 2)
    assert r["captions_per_image"] == {"1": 4, "3": 1}
    assert r["caption_words"]["min"] == 0 and r["caption_words"]["max"] == 6
    assert r["empty_captions"] == 1 and r["empty_caption_images"] == ["train/4.jpg"]
    assert r["duplicate_captions_within_image"] == 1
    assert r["captions_shared_by_several_images"] == 1
    assert r["most_shared_captions"] == [{"caption": "a red bus", "images": 2}]
    assert r["images_without_captions"] == 1
    assert r["problem_reasons"] == {"missing": 1, "truncated": 1}
    assert {p["file_name"]: p["reason"] for p in r["problems"]} == {
        "train/4.jpg": "truncated", "train/5.jpg": "missing"}
    assert r["use_restval"] is True


def test_build_data_report_files_and_split_overlap(tmp_path):
    val = _captions("train", [(1, "leaked"), (9, "fine")])  # train/1.jpg is also in val
    paths = {}
    for split, caps, index in (("train", TRAIN, TRAIN_INDEX),
                               ("val", val, _index([1, 9], "train", {}))):
        caps.to_parquet(tmp_path / f"{split}.parquet")
        index.to_parquet(tmp_path / f"{split}.index.parquet")
        (tmp_path / f"{split}.source.json").write_text(json.dumps(SOURCE))
        paths[split] = [tmp_path / f"{split}{s}" for s in (".parquet", ".source.json",
                                                           ".index.parquet")]
    report = build_data_report(["train", "val"], *[[paths[s][k] for s in ("train", "val")]
                                                   for k in range(3)],
                               tmp_path / "r.json", tmp_path / "r.md", dataset="x",
                               image_size=32)
    assert report["images_in_two_splits"] == {"train/val": 1}
    assert report["totals"]["captions"] == 9 and report["totals"]["problem_images"] == 2
    assert json.loads((tmp_path / "r.json").read_text())["totals"] == report["totals"]
    md = (tmp_path / "r.md").read_text()
    assert "| train/5.jpg | missing | missing |" in md
    assert "restval used" in md and "train/val: 1" in md and "Ein Café" not in md
    # Vocabulary per split and over both: train's 14 words plus val's "leaked", "fine".
    train_vocab = report["splits"]["train"]["vocabulary"]
    assert train_vocab["vocabulary_size"] == 14 and train_vocab["words"] == 22
    assert report["vocabulary"]["vocabulary_size"] == 16
    assert "- vocabulary: 14 distinct lower-cased words in 22 words" in md
    assert "## All splits" in md and "- vocabulary: 16 distinct" in md


def test_vocabulary_lowercases_splits_punctuation_and_ranks_ties_by_word():
    counts = word_counts(["A dog, a DOG.", "The man's dog on a bench", "café au lait"])
    assert counts["dog"] == 3 and counts["a"] == 3 and counts["man's"] == 1
    assert counts["café"] == 1 and "dog," not in counts and "" not in counts
    v = vocabulary_report(counts, n=3)
    assert v["vocabulary_size"] == len(counts) == 9
    assert v["words"] == 13 and v["words_seen_once"] == 7
    # "a" and "dog" tie at 3 (alphabetical), then the 1-count words alphabetically.
    assert [d["word"] for d in v["most_frequent_words"]] == ["a", "dog", "au"]
    # Function words ("a", "the", "on") are left out of the content list only.
    assert [d["word"] for d in v["most_frequent_content_words"]] == ["dog", "au", "bench"]
    assert v["most_frequent_words"][0] == {"word": "a", "count": 3}


def test_samples_are_seeded_and_skip_bad_images(tmp_path):
    picks = pick_samples(TRAIN, TRAIN_INDEX, count=10, seed=0)
    assert len(picks) == 3 and {p[2] for p in picks} == {"train/1.jpg", "train/2.jpg",
                                                         "train/3.jpg"}
    assert pick_samples(TRAIN, TRAIN_INDEX, count=2, seed=3) == pick_samples(
        TRAIN, TRAIN_INDEX, count=2, seed=3)
    np.save(tmp_path / "a.npy", np.full((5, 8, 8, 3), 128, np.uint8))
    TRAIN.to_parquet(tmp_path / "c.parquet")
    TRAIN_INDEX.to_parquet(tmp_path / "i.parquet")
    n = write_samples(tmp_path / "c.parquet", tmp_path / "a.npy", tmp_path / "i.parquet",
                      tmp_path / "s.png", count=2, seed=0, title="t")
    assert n == 2 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
