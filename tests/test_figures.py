"""Report figures on tiny synthetic data: each writes a real PNG; zero-shot maths checked."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cliptune.evaluation.zero_shot import (
    average_precision,
    class_embeddings,
    demo_labels,
    zero_shot_accuracy,
    zero_shot_probs,
)
from cliptune.reporting import figures

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 255, size=(6, 16, 16, 3), dtype=np.uint8)
CAPTIONS = [f"caption number {i} with a few words to wrap around" for i in range(6)]


def assert_png(path, min_px=200):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and min(img.size) >= min_px


def test_text_to_image_grid(tmp_path):
    idx = np.array([[0, 1, 2], [3, 4, 5]])
    figures.plot_text_to_image(["a red circle", "sport"], idx, RNG.random((2, 3)), IMAGES,
                               CAPTIONS, tmp_path / "t2i.png", "variant: x")
    assert_png(tmp_path / "t2i.png")


def test_image_to_text_grid(tmp_path):
    correct = np.array([[True, False, False], [False, False, True]])
    figures.plot_image_to_text(IMAGES[:2], [CAPTIONS[:3], CAPTIONS[3:]], RNG.random((2, 3)),
                               correct, tmp_path / "i2t.png", "variant: x")
    assert_png(tmp_path / "i2t.png")


@pytest.mark.parametrize("with_labels", [True, False])
def test_zero_shot_bars(tmp_path, with_labels):
    probs = torch.softmax(torch.randn(3, 7), dim=1).numpy()
    labels = RNG.random((3, 7)) > 0.5 if with_labels else None
    figures.plot_zero_shot(IMAGES[:3], [f"class {c}" for c in range(7)], probs,
                           tmp_path / "zs.png", "variant: x", labels=labels, top=4,
                           subtitle="top-1 10%")
    assert_png(tmp_path / "zs.png")


def test_similarity_heatmap(tmp_path):
    figures.plot_similarity_heatmap(IMAGES[:4], CAPTIONS[:4], RNG.random((4, 4)),
                                    tmp_path / "heat.png", "variant: x")
    assert_png(tmp_path / "heat.png")


def test_loss_overlay_skips_untrained(tmp_path):
    hist = pd.DataFrame({"epoch": [1, 2], "train_loss": [3.0, 2.0], "val_loss": [3.1, 2.5],
                         "temperature": [0.07, 0.06]})
    figures.plot_loss_overlay({"baseline": hist, "other": hist * 0.9,
                               "untrained": pd.DataFrame()}, tmp_path / "ov.png", "baseline")
    assert_png(tmp_path / "ov.png")


def test_prompt_ensemble_is_mean_of_normalised_prompts():
    table = {"a {}.": torch.tensor([1.0, 0.0]), "the {}!": torch.tensor([0.0, 2.0])}

    def encode(prompts):  # the class name only decides the sign
        return torch.stack([table[p.replace("cat", "{}").replace("dog", "{}")]
                            * (1 if "cat" in p else -1) for p in prompts])

    emb = class_embeddings(encode, ["cat", "dog"], ["a {}.", "the {}!"])
    s = float(1 / np.sqrt(2))
    assert torch.allclose(emb, torch.tensor([[s, s], [-s, -s]]), atol=1e-6)
    with pytest.raises(ValueError, match="placeholder"):
        class_embeddings(encode, ["cat"], ["no slot"])


def test_zero_shot_probs_and_accuracy():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]]), dim=1)
    cls = torch.eye(2)
    probs = zero_shot_probs(img, cls, temperature=0.1).numpy()
    assert np.allclose(probs.sum(1), 1) and probs[0, 0] > 0.9 and probs[1, 1] > 0.9
    labels = np.array([[1, 0], [1, 0], [0, 0]], dtype=bool)  # last image has no label
    acc = zero_shot_accuracy(probs, labels, ks=(1,))
    assert acc["n_images"] == 2 and acc["n_images_without_labels"] == 1
    assert acc["top1_accuracy"] == pytest.approx(50.0)
    assert acc["chance_top1_accuracy"] == pytest.approx(50.0)  # one of two classes each
    # class 0 is positive for both images; image 0 ranks first -> precisions 1, 1.
    assert acc["mAP"] == pytest.approx(100.0) and acc["n_classes_present"] == 1
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([0, 1, 1])) == pytest.approx(
        (1 / 2 + 2 / 3) / 2)


def test_demo_labels_match_the_generated_captions():
    from cliptune.data.demo_captions import describe_scene
    from cliptune.data.demo_data import image_id_for, image_rng
    from cliptune.data.demo_scenes import sample_scene

    rng = image_rng(0, "val", 3)
    scene = sample_scene(rng, 3)
    caption = " ".join(describe_scene(scene, rng, 5))
    labels = demo_labels(np.array([image_id_for("val", 3)]), ["circle", "square", "triangle",
                                                              "star", "cross", "ring"], 0, 3)
    shapes = {s.shape for s in scene.shapes}
    assert {c for c, hit in zip(["circle", "square", "triangle", "star", "cross", "ring"],
                                labels[0], strict=True) if hit} == shapes
    assert any(word in caption for word in ("circle", "disc", "square", "triangle", "star",
                                            "cross", "plus", "ring", "hoop"))


def test_variant_figures_from_saved_embeddings(tmp_path):
    """The figures job end to end on a fake evaluation: files in, four PNGs + JSON out."""
    from safetensors.torch import save_file

    from cliptune.config import DEFAULTS
    from cliptune.data.demo_data import image_id_for
    from cliptune.reporting.variant_figures import FIGURES, run_variant_figures

    n, per, dim = 6, 2, 8
    ids = np.array([image_id_for("val", i) for i in range(n)], dtype=np.int64)
    text_image = np.repeat(np.arange(n), per)
    img = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
    txt = torch.nn.functional.normalize(img[text_image] + 0.3 * torch.randn(n * per, dim), dim=1)
    save_file({"image": img, "text": txt, "image_id": torch.from_numpy(ids),
               "caption_id": torch.arange(n * per), "text_image_index":
               torch.from_numpy(text_image)}, str(tmp_path / "emb.safetensors"))
    pd.DataFrame({"image_id": ids[text_image], "caption_id": np.arange(n * per),
                  "caption": [f"caption {m} of image {m // per}" for m in range(n * per)]}
                 ).to_parquet(tmp_path / "caps.parquet")
    np.save(tmp_path / "img.npy", IMAGES[::-1].copy())  # cache rows in reverse id order
    pd.DataFrame({"row": np.arange(n), "image_id": ids[::-1], "ok": True}
                 ).to_parquet(tmp_path / "img.index.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps({"temperature": 0.05}))
    report = json.loads(json.dumps(DEFAULTS["report"]))
    report.update(queries=["a red circle", "a cat"], top_k=3, n_images=2, heatmap_size=4)
    report["zero_shot"]["classes"] = ["circle", "square", "star"]
    variant = {"name": "v", "eval": {"block_size": 4}}

    def encode(texts):  # deterministic fake text tower
        g = torch.Generator().manual_seed(len(texts))
        return torch.randn(len(texts), dim, generator=g)

    out = tmp_path / "figures"
    result = run_variant_figures(variant, report, {"source": "demo", "demo": {"seed": 0}},
                                 tmp_path / "emb.safetensors", tmp_path / "metrics.json",
                                 tmp_path / "caps.parquet", tmp_path / "img.npy",
                                 tmp_path / "img.index.parquet", out, tmp_path / "zs.json",
                                 encode=encode)
    for name in FIGURES:
        assert_png(out / f"{name}.png")
    saved = json.loads((tmp_path / "zs.json").read_text())
    assert saved["classes"] == ["circle", "square", "star"] and saved["temperature"] == 0.05
    assert 0 <= result["accuracy"]["top1_accuracy"] <= 100 and saved["accuracy"]["n_images"] <= n


def test_loss_curves_show_accuracy_per_step_loss_and_warmup(tmp_path):
    from cliptune.reporting.plots import plot_loss_curves

    hist = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.5, 2.2],
                         "val_loss": [3.1, 2.7, 2.5], "temperature": [0.07, 0.06, 0.05],
                         "lr": [1e-4, 5e-5, 0.0],
                         **{f"{s}_acc_{w}": [10.0, 20.0, 30.0] for s in ("train", "val")
                            for w in ("i2t", "t2i")}})
    steps = pd.DataFrame({"step": range(1, 31), "loss": np.linspace(3.2, 2.1, 30),
                          "lr": [min(k / 5, 1.0) * 1e-4 for k in range(1, 31)]})
    fig = plot_loss_curves(hist, tmp_path / "curves.png", "baseline", steps=steps)
    assert (tmp_path / "curves.png").stat().st_size > 0
    loss_ax, acc_ax, lr_ax, _ = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate",
                                                  "temperature"]
    assert len(loss_ax.lines[0].get_xdata()) == 30  # every optimiser step
    assert len(acc_ax.lines) == 4  # train/val x image->text/text->image
    lr = lr_ax.lines[0].get_ydata()
    assert len(lr) == 30 and lr[0] < lr[4] == max(lr)  # the warmup is visible
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert np.allclose(ticks, np.round(ticks))  # integer epoch ticks
