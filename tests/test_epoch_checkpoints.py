"""train.keep_epoch_checkpoints (the last N epochs' resume states),
train.keep_epoch_checkpoints_every (every Nth epoch's) and train.resume_from (restart from
one of them): cliptune.training.checkpoint."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from tiny_pairs import load_train_val, tiny_variant

from cliptune.config.load import ConfigError, deep_merge, load_config, resolve_variant
from cliptune.training.checkpoint import (
    ResumeError,
    drop_epochs_after,
    epoch_path,
    keep_epoch,
    keeps_epoch,
    kept_epochs,
    resume_hash,
)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return load_train_val(tmp_path_factory.mktemp("pairs"), n_train=32, n_val=16)


def variant(**train) -> dict:
    # Frozen trunk: fast; augmentation: a restart must restore the RNGs to match.
    v = tiny_variant(**{"epochs": 3, "batch_size": 16, "tensorboard": False,
                        "augment": {"enabled": True}, **train})
    v["model"] = deep_merge(v["model"], {"freeze_backbone": True})
    return v


def train(v, pairs, folder, **kwargs) -> dict:
    from cliptune.training.trainer import train_variant

    return train_variant(v, *pairs, folder / "out", folder / "ckpt" / "state.pt",
                         show_progress=False, **kwargs)


def test_keep_prunes_and_a_restart_drops_the_replaced_chain(tmp_path):
    state = tmp_path / "state.pt"
    for epoch in range(1, 5):
        new = tmp_path / "new.pt"  # save_state writes a new file and renames it over
        new.write_text(f"state after epoch {epoch}")
        os.replace(new, state)
        keep_epoch(state, epoch, keep=3, every=0)
    assert kept_epochs(state) == [2, 3, 4]
    assert epoch_path(state, 2).read_text() == "state after epoch 2"
    drop_epochs_after(state, 2)  # a run restarting after epoch 2 replaces epochs 3-4
    assert kept_epochs(state) == [2]


def test_a_cadence_keeps_every_nth_epoch_for_good_beside_the_last_n(tmp_path):
    state = tmp_path / "state.pt"
    for keep, every, kept in ((0, 5, [5, 10, 15, 20]), (2, 5, [5, 10, 15, 19, 20]),
                              (3, 0, [18, 19, 20]), (1, 7, [7, 14, 20])):
        for old in kept_epochs(state):
            epoch_path(state, old).unlink()
        for epoch in range(1, 21):
            new = tmp_path / "new.pt"  # save_state writes a new file and renames it over
            new.write_text(f"state after epoch {epoch}")
            os.replace(new, state)
            if keeps_epoch(epoch, keep, every):
                keep_epoch(state, epoch, keep, every)
        assert kept_epochs(state) == kept, (keep, every)
    assert epoch_path(state, 14).read_text() == "state after epoch 14"
    assert not keeps_epoch(4, 0, 5) and keeps_epoch(10, 0, 5) and keeps_epoch(4, 1, 0)


def test_resumes_from_an_epoch_the_cadence_kept_after_the_run_ended(pairs, tmp_path):
    """Seed 002's "every 5 epochs", in small: epochs 2 and 4 of 4 are kept, and a restart
    from epoch 2 after the run retrains epochs 3-4 exactly as the run did."""
    every = variant(epochs=4, keep_epoch_checkpoints_every=2)
    straight = train(every, pairs, tmp_path)
    state = tmp_path / "ckpt" / "state.pt"
    assert kept_epochs(state) == [2, 4]
    resumed = train(variant(epochs=4, keep_epoch_checkpoints_every=2, resume_from=2), pairs,
                    tmp_path)
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert kept_epochs(state) == [2, 4]
    with pytest.raises(ResumeError, match=r"kept epochs are \[2, 4\]"):
        train(variant(epochs=4, keep_epoch_checkpoints_every=2, resume_from=3), pairs,
              tmp_path)


def test_keeps_the_last_epochs_and_resumes_from_one_exactly(pairs, tmp_path):
    straight = train(variant(keep_epoch_checkpoints=2), pairs, tmp_path)
    state = tmp_path / "ckpt" / "state.pt"
    assert kept_epochs(state) == [2, 3]
    kept = torch.load(epoch_path(state, 2), map_location="cpu", weights_only=True)
    assert kept["epoch"] == 2 and kept["partial"] is None
    assert [row["train_loss"] for row in kept["history"]] == [
        row["train_loss"] for row in straight["history"][:2]]
    weights = torch.load(state, weights_only=True)["model"]
    # Same settings, restarted after epoch 2: a new run identity, so state.pt (written
    # without resume_from) is not continued; epoch 3 is retrained and matches.
    again = variant(keep_epoch_checkpoints=2, resume_from=2)
    assert resume_hash(again) != resume_hash(variant(keep_epoch_checkpoints=2))
    resumed = train(again, pairs, tmp_path)
    for a, b in zip(straight["history"], resumed["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    after = torch.load(state, weights_only=True)
    assert all(torch.allclose(weights[k].float(), after["model"][k].float(), atol=1e-5)
               for k in weights)
    # Epoch 2 is the first run's; epoch 3 was written again, by the restarted run.
    assert kept_epochs(state) == [2, 3]
    hashes = [torch.load(epoch_path(state, e), weights_only=True)["config_hash"]
              for e in (2, 3)]
    assert hashes == [resume_hash(variant(keep_epoch_checkpoints=2)), resume_hash(again)]
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    assert report["resumed_from"] == {"epoch": 2, "checkpoint": str(epoch_path(state, 2))}
    assert report["epochs_run"] == 3


def test_missing_epoch_or_another_model_is_a_clear_error(pairs, tmp_path):
    train(variant(keep_epoch_checkpoints=1, epochs=1), pairs, tmp_path, write_outputs=False)
    with pytest.raises(ResumeError, match=r"resume_from = 2 .*kept epochs are \[1\]"):
        train(variant(epochs=5, resume_from=2), pairs, tmp_path)
    with pytest.raises(ResumeError, match=r"no epoch is kept"):
        train(variant(resume_from=1), pairs, tmp_path / "fresh")
    other = variant(resume_from=1, epochs=2)
    other["model"]["head"]["hidden_dim"] = 48
    with pytest.raises(ResumeError, match="does not fit this variant's model"):
        train(other, pairs, tmp_path)


def test_config_rejects_resume_at_or_after_the_last_epoch():
    raw = yaml.safe_load("""
dataset: {name: t, source: demo}
train: {epochs: 3, resume_from: 2, keep_epoch_checkpoints: 2}
variants: {baseline: {}, longer: {train: {resume_from: 3}}}
""")
    with pytest.raises(ConfigError, match=r"'longer' sets train.resume_from = 3 with "
                                          r"train.epochs = 3"):
        load_config(raw)
    raw["variants"]["longer"] = None
    cfg = load_config(raw)
    assert resolve_variant(cfg, "baseline")["train"]["resume_from"] == 2
    assert resolve_variant(cfg, "untrained")["train"]["resume_from"] is None  # random init


@pytest.mark.parametrize("value", [-1, 2.5, "5"])
def test_a_bad_cadence_is_rejected_naming_the_key(value):
    raw = {"dataset": {"name": "t", "source": "demo"}, "variants": {"baseline": {}},
           "train": {"keep_epoch_checkpoints_every": value}}
    with pytest.raises(ConfigError, match="keep_epoch_checkpoints_every"):
        load_config(raw)


def test_the_flickr_study_keeps_every_fifth_epoch(repo):
    cfg = load_config(yaml.safe_load((repo / "config" / "flickr30k_scratch.yaml").read_text()))
    train = resolve_variant(cfg, cfg["baseline"])["train"]
    assert (train["keep_epoch_checkpoints_every"], train["epochs"]) == (5, 20)
