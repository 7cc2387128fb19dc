"""Report figures on tiny synthetic data: each writes a real PNG; zero-shot maths checked."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cliptune.config.load import ConfigError
from cliptune.evaluation.prompts import check_templates, class_name, render
from cliptune.evaluation.zero_shot import (
    average_precision,
    class_embeddings,
    zero_shot_accuracy,
    zero_shot_probs,
)
from cliptune.evaluation.zero_shot_labels import caption_labels, demo_labels
from cliptune.evaluation.zero_shot_tasks import resolve_tasks
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


@pytest.mark.parametrize(("name", "expected"), [
    ("apple", "a photo of an apple."),        # a/an by the leading vowel
    ("person", "a photo of a person."),
    ("a person", "a photo of a person."),      # an article in the name: used as it is
    ("the sky", "a photo of the sky."),
    ("an indoor scene", "a photo of an indoor scene."),
    ("unicorn", "a photo of a unicorn."),      # a vowel letter with a consonant sound
    ("hour glass", "a photo of an hour glass."),  # silent h
    ("SUV", "a photo of an SUV."), ("TV", "a photo of a TV."),  # acronyms by letter name
    ("skis", "a photo of skis."), ("scissors", "a photo of scissors."),  # plurals
    ("bus", "a photo of a bus."), ("glass", "a photo of a glass."),  # -us / -ss: singular
    ("broccoli", "a photo of broccoli."),      # a mass noun
    ("people playing tennis", "a photo of people playing tennis."),
    ({"name": "iris", "article": "an"}, "a photo of an iris."),  # explicit article
    ({"name": "sushi", "article": ""}, "a photo of sushi."),
])
def test_templates_write_the_right_article(name, expected):
    legacy, slot = check_templates(["a photo of a {}.", "a photo of {article}."])
    cls = class_name(name)
    assert render(legacy, cls) == render(slot, cls) == expected
    bare = check_templates(["the large {}."])[0]  # {}: the bare name, its article dropped
    assert render(bare, cls) == f"the large {cls.bare}." and " a " not in render(bare, cls)


def test_template_slots_are_checked():
    assert check_templates(["A {} on a table."]) == ["{Article} on a table."]
    assert render("{Article} on a table.", class_name("apple")) == "An apple on a table."
    for bad in (["no slot"], ["{} and {article}"], []):
        with pytest.raises(ValueError, match="exactly one placeholder"):
            check_templates(bad)
    with pytest.raises(ValueError, match="keep one of them"):
        class_name({"name": "the sky", "article": "a"})


ZS = {"templates": ["a photo of {article}."], "top_classes": 3}


def test_tasks_resolve_and_reject_what_cannot_be_labelled():
    tasks = resolve_tasks(dict(ZS, tasks=None), "coco")
    assert list(tasks) == ["objects"] and tasks["objects"].labels == "coco"
    assert len(tasks["objects"].classes) == 80
    assert resolve_tasks(dict(ZS, tasks=None), "flickr30k")["objects"].labels == "captions"
    demo = resolve_tasks(dict(ZS, tasks={
        "shapes": {"classes": None, "labels": "demo"},
        "colours": {"classes": ["red", "blue"], "labels": "demo", "templates": ["a {} thing."]},
        "mood": {"classes": ["a calm scene", "a busy scene"], "labels": "none"}}), "demo")
    assert demo["shapes"].names[:2] == ["circle", "square"]
    assert demo["colours"].templates == ("{article} thing.",)
    bad = [({"x": {"classes": ["cat", "dog"], "labels": "coco"}}, "demo",
            "needs dataset.source: coco"),
           ({"x": {"classes": ["circle", "unicorn"], "labels": "demo"}}, "demo",
            r"cannot label \['unicorn'\]"),
           ({"x": {"classes": ["cat", "kitten"], "labels": "coco"}}, "coco",
            r"cannot label \['kitten'\]"),
           ({"x": {"classes": ["cat", "cat"], "labels": "none"}}, "coco", "appear twice"),
           ({"x": {"classes": ["cat", "dog"], "labels": "none", "templates": ["x"]}}, "coco",
            "tasks.x.templates")]
    for tasks_cfg, source, message in bad:
        with pytest.raises(ConfigError, match=message):
            resolve_tasks(dict(ZS, tasks=tasks_cfg), source)


def test_coco_labels_need_the_label_file(tmp_path):
    """labels: coco waits for COCO's instances json (or, downloading, the annotations zip's
    marker); a missing file stops the workflow at parse time saying where it goes."""
    from cliptune.evaluation.zero_shot_tasks import label_file, label_input

    tasks = resolve_tasks(dict(ZS, tasks=None), "coco")
    cfg = {"dataset": {"root": str(tmp_path), "download": False, "source": "coco",
                       "splits": {"train": "train2014", "val": "val2014"},
                       "selection": {"split": "select"}}}
    with pytest.raises(ConfigError, match=r"annotations/instances_val2014.json"):
        label_input(cfg, "val", tasks)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2014.json").write_text("{}")
    assert label_input(cfg, "val", tasks) == {"labels": label_file(cfg, "val", tasks)}
    cfg["dataset"]["download"] = True
    assert label_input(cfg, "val", tasks)["labels"].endswith(
        ".annotations_trainval2014.zip.complete")
    none = resolve_tasks(dict(ZS, tasks={"x": {"classes": ["a", "b"], "labels": "none"}}), "coco")
    assert label_input(cfg, "val", none) == {} and label_file(cfg, "val", none) == ""


def test_coco_labels_read_the_instance_annotations(tmp_path):
    from cliptune.evaluation.zero_shot_labels import coco_labels

    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    anns = [{"id": n, "image_id": i, "category_id": c, "bbox": [0, 0, 1, 1], "area": 1,
             "iscrowd": 0} for n, (i, c) in enumerate([(10, 1), (10, 18), (11, 3)], 1)]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": [{"id": i} for i in (10, 11, 12)],
                                "annotations": anns, "categories": cats}))
    labels = coco_labels(path, np.array([11, 10, 12]), ["dog", "person", "car"])
    assert labels.tolist() == [[False, False, True], [True, True, False],
                               [False, False, False]]
    with pytest.raises(ValueError, match=r"no categories \['kitten'\]"):
        coco_labels(path, np.array([10]), ["kitten", "dog"])


def test_caption_labels_are_whole_word_mentions_per_image():
    captions = ["A man skiing down a hill", "two skis on snow", "a cat on a mat",
                "a skier", "Tennis players", "a concatenation"]
    owner = np.array([0, 1, 2, 2, 3, 3])
    ski = class_name({"name": "a person skiing", "keywords": ["skiing", "ski", "skier"]})
    labels = caption_labels(captions, owner, 5, [ski.keywords, class_name("cat").keywords,
                                                 ("tennis",)])
    assert labels.tolist() == [[True, False, False], [True, False, False],
                               [True, True, False], [False, False, True],
                               [False, False, False]]  # "concatenation" is not a cat


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


def _scenes_file(path, ids, seed=0, max_shapes=3):
    """The demo generator's scenes file for val images ``ids`` (as generate_demo_dataset
    writes it), without drawing the images."""
    from cliptune.demo.dataset import VAL_ID_OFFSET, scene_for_image

    path.write_text(json.dumps({"scenes": [
        {"image_id": int(i), **scene_for_image("val", int(i) - 1 - VAL_ID_OFFSET, seed=seed,
                                               max_shapes=max_shapes).to_dict()}
        for i in ids]}))
    return path


def test_demo_labels_match_the_generated_captions(tmp_path):
    from cliptune.demo.captions import describe_scene
    from cliptune.demo.dataset import image_id_for, image_rng
    from cliptune.demo.scenes import sample_scene

    rng = image_rng(0, "val", 3)
    scene = sample_scene(rng, 3)
    caption = " ".join(describe_scene(scene, rng, 5))
    scenes = _scenes_file(tmp_path / "scenes.json", [image_id_for("val", i) for i in range(5)])
    labels = demo_labels(scenes, np.array([image_id_for("val", 3)]),
                         ["circle", "square", "triangle", "star", "cross", "ring"])
    shapes = {s.shape for s in scene.shapes}
    assert {c for c, hit in zip(["circle", "square", "triangle", "star", "cross", "ring"],
                                labels[0], strict=True) if hit} == shapes
    assert any(word in caption for word in ("circle", "disc", "square", "triangle", "star",
                                            "cross", "plus", "ring", "hoop"))
    # An image the file does not know is an error naming the fix, never an empty label row.
    with pytest.raises(ValueError, match="belongs to another demo dataset"):
        demo_labels(scenes, np.array([image_id_for("val", 7)]), ["circle", "square"])


def _fake_evaluation(tmp_path, n=6, per=2, dim=8, seed=0):
    """A variant's evaluate outputs (embeddings, captions, image cache, metrics) on disk."""
    from safetensors.torch import save_file

    from cliptune.demo.dataset import image_id_for

    torch.manual_seed(seed)
    ids = np.array([image_id_for("val", i) for i in range(n)], dtype=np.int64)
    text_image = np.repeat(np.arange(n), per)
    img = torch.nn.functional.normalize(torch.randn(n, dim), dim=1)
    txt = torch.nn.functional.normalize(img[text_image] + 0.3 * torch.randn(n * per, dim), dim=1)
    save_file({"image": img, "text": txt, "image_id": torch.from_numpy(ids),
               "caption_id": torch.arange(n * per), "text_image_index":
               torch.from_numpy(text_image)}, str(tmp_path / "emb.safetensors"))
    words = ["circle", "square", "star"]
    pd.DataFrame({"image_id": ids[text_image], "caption_id": np.arange(n * per),
                  "caption": [f"a {words[m % 3]} of image {m // per}" for m in range(n * per)]}
                 ).to_parquet(tmp_path / "caps.parquet")
    np.save(tmp_path / "img.npy", IMAGES[::-1].copy())  # cache rows in reverse id order
    pd.DataFrame({"row": np.arange(n), "image_id": ids[::-1], "ok": True}
                 ).to_parquet(tmp_path / "img.index.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps({"temperature": 0.05}))
    return ids


def _fake_encode(texts):  # deterministic fake text tower
    g = torch.Generator().manual_seed(len(texts))
    return torch.randn(len(texts), 8, generator=g)


def _figures_report():
    from cliptune.config.load import DEFAULTS

    report = json.loads(json.dumps(DEFAULTS["report"]))
    report.update(queries=["a red circle", "a cat"], top_k=3, n_images=2, heatmap_size=4)
    report["zero_shot"]["tasks"] = {
        "shapes": {"classes": ["circle", "square", "star"], "labels": "demo"},
        "mentions": {"classes": ["circle", "square", "star"], "labels": "captions"},
        "mood": {"classes": ["a calm scene", "a busy scene"], "labels": "none"}}
    return report


def _evaluate_prompts(tmp_path, name="v"):
    """evaluate's prompt results (queries.json, zero_shot.json, prompts.safetensors) of a
    fake evaluation, with the fake text tower."""
    from safetensors.torch import load_file

    from cliptune.evaluation.prompt_results import Evaluated, PromptSpec, write_prompt_results

    emb = load_file(str(tmp_path / "emb.safetensors"))
    ids = emb["image_id"].numpy()
    captions = pd.read_parquet(tmp_path / "caps.parquet")["caption"].tolist()
    ev = Evaluated(emb["image"], ids, captions, emb["text_image_index"].numpy(), 0.05, 4)
    spec = PromptSpec.of(_figures_report(), "demo", _scenes_file(tmp_path / "scenes.json", ids))
    return write_prompt_results(name, spec, _fake_encode, ev, tmp_path)


def _run_figures(tmp_path, name="v"):
    from cliptune.reporting.variant_figures import run_variant_figures

    result = _evaluate_prompts(tmp_path, name)
    run_variant_figures(name, _figures_report(), 4, tmp_path / "emb.safetensors",
                        tmp_path / "queries.json", tmp_path / "zero_shot.json",
                        tmp_path / "prompts.safetensors", tmp_path / "caps.parquet",
                        tmp_path / "img.npy", tmp_path / "img.index.parquet",
                        tmp_path / "figures")
    return result


def test_variant_figures_from_saved_embeddings(tmp_path):
    """evaluate's prompt results on a fake evaluation (zero-shot JSON, the queries' ranking,
    probabilities and labels), then the figures job from those files alone: PNGs, one
    per zero-shot task."""
    from safetensors.numpy import load_file

    from cliptune.reporting.variant_figures import FIGURES

    ids = _fake_evaluation(tmp_path)
    result = _run_figures(tmp_path)
    for name in (*FIGURES, "zero_shot/shapes", "zero_shot/mentions", "zero_shot/mood"):
        assert_png(tmp_path / "figures" / f"{name}.png")
    saved = json.loads((tmp_path / "zero_shot.json").read_text())
    assert saved["temperature"] == 0.05
    assert saved["task_order"] == ["shapes", "mentions", "mood"] == list(result["tasks"])
    shapes, mentions, mood = (saved["tasks"][t] for t in ("shapes", "mentions", "mood"))
    assert shapes["classes"] == ["circle", "square", "star"] and shapes["labels"] == "demo"
    assert 0 <= result["tasks"]["shapes"]["accuracy"]["top1_accuracy"] <= 100
    assert shapes["accuracy"]["n_images"] <= len(ids)
    assert mentions["accuracy"]["n_images"] == len(ids)  # every caption names a shape
    assert mood["accuracy"] is None and mood["prompts"][0] == "a photo of a calm scene."
    queries = json.loads((tmp_path / "queries.json").read_text())
    assert queries["queries"] == ["a red circle", "a cat"]
    assert np.array(queries["image_id"]).shape == (2, 3)
    assert set(np.ravel(queries["image_id"])) <= set(ids.tolist())
    # The saved probabilities and labels are what the accuracy was computed from.
    tensors = load_file(str(tmp_path / "prompts.safetensors"))
    assert tensors["queries"].shape == (2, 8) and tensors["shapes.classes"].shape == (3, 8)
    assert tensors["shapes.probs"].shape == (len(ids), 3) and "mood.labels" not in tensors
    assert zero_shot_accuracy(tensors["shapes.probs"], tensors["shapes.labels"]) == \
        pytest.approx(shapes["accuracy"])


def test_figures_job_reads_files_only(repo):
    """The figures rule has no model or weights input and asks for no GPU, and it runs on
    the submitting node (localrules); evaluate writes what it draws."""
    evaluate = (repo / "workflow" / "rules" / "evaluate.smk").read_text()
    figures_rule = evaluate.split("rule figures:", 1)[1].split("\nrule ", 1)[0]
    assert "model" not in figures_rule.split("output:")[0]
    assert "weights" not in figures_rule and "gpu" not in figures_rule
    evaluate_rule = evaluate.split("rule evaluate:", 1)[1].split("\nrule ", 1)[0]
    for output in ("queries=QUERIES_JSON", "zero_shot=ZERO_SHOT_JSON", "prompts=PROMPTS"):
        assert output in evaluate_rule.split("params:")[0]
    local = (repo / "Snakefile").read_text().split("localrules:", 1)[1]
    for rule in ("figures", "queries_across_variants", "loss_curves"):
        assert f"    {rule},\n" in local
    search = (repo / "workflow" / "rules" / "search.smk").read_text()
    assert "search_image_to_text," in search.split("localrules:", 1)[1]
    import cliptune.reporting.variant_figures as vf

    source = (repo / "workflow" / "cliptune" / "reporting" / "variant_figures.py").read_text()
    assert "load_variant_model" not in source and "text_encoder" not in source
    assert not hasattr(vf, "figures_gpus")


def test_queries_across_variants_reuse_each_variants_ranking(tmp_path):
    """Rows = queries, columns = variants: each column is that variant's own saved ranking
    (nothing re-encoded), its images read from its own cache by id."""
    from cliptune.reporting.query_comparison import queries_across_variants

    paths = {}
    for seed, name in enumerate(("a", "b")):
        d = tmp_path / name
        d.mkdir()
        _fake_evaluation(d, seed=seed)
        _run_figures(d, name)
        paths[name] = {"queries": d / "queries.json", "array": d / "img.npy",
                       "index": d / "img.index.parquet"}
    out = tmp_path / "queries_across_variants.png"
    ids = queries_across_variants(paths, ["a red circle", "a cat"], out)
    assert_png(out)
    for name in paths:
        saved = json.loads(paths[name]["queries"].read_text())
        assert ids[name] == [row[:3] for row in saved["image_id"]]
    assert ids["a"] != ids["b"]  # different towers, different rankings
    with pytest.raises(RuntimeError, match="report.queries"):
        queries_across_variants(paths, ["another query", "a cat"], out)


def test_loss_curves_show_accuracy_per_step_loss_and_warmup(tmp_path):
    from cliptune.reporting.plots import plot_loss_curves

    hist = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.5, 2.2],
                         "train_loss_in_batch": [2.0, 1.6, 1.4],  # mined negatives
                         "val_loss": [3.1, 2.7, 2.5], "temperature": [0.07, 0.06, 0.05],
                         "lr": [1e-4, 5e-5, 0.0],
                         **{f"{s}_acc_{w}": [10.0, 20.0, 30.0] for s in ("train", "val")
                            for w in ("i2t", "t2i")}})
    steps = pd.DataFrame({"step": range(1, 31), "loss": np.linspace(3.2, 2.1, 30),
                          "lr": [min(k / 5, 1.0) * 1e-4 for k in range(1, 31)]})
    fig = plot_loss_curves(hist, tmp_path / "curves.png", "baseline", steps=steps,
                           loss="symmetric InfoNCE")
    assert (tmp_path / "curves.png").stat().st_size > 0
    loss_ax, acc_ax, lr_ax, _ = fig.axes
    # Mined negatives: the in-batch training loss, comparable with validation, is drawn too.
    assert "train, in-batch negatives (as validation)" in [
        line.get_label() for line in loss_ax.lines]
    assert [ax.get_title() for ax in fig.axes] == ["loss: symmetric InfoNCE", "accuracy",
                                                  "learning rate", "temperature"]
    # A triplet run names its loss and says the temperature plays no part in it.
    fig = plot_loss_curves(hist, tmp_path / "triplet.png", "triplet", steps=steps,
                           loss="bidirectional triplet hinge, margin 0.2, hardest mining",
                           temperature_used=False)
    assert fig.axes[0].get_title().startswith("loss: bidirectional triplet hinge")
    assert fig.axes[3].get_title() == "temperature (unused by the loss)"
    assert len(loss_ax.lines[0].get_xdata()) == 30  # every optimiser step
    assert len(acc_ax.lines) == 4  # train/val x image->text/text->image
    lr = lr_ax.lines[0].get_ydata()
    assert len(lr) == 30 and lr[0] < lr[4] == max(lr)  # the warmup is visible
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert np.allclose(ticks, np.round(ticks))  # integer epoch ticks


def test_coco_labelled_task_is_saved_with_its_labels(tmp_path):
    """A labels: coco task (a column selection of COCO's instance matrix) goes through
    evaluate's prompt results into prompts.safetensors with its labels intact."""
    from safetensors.torch import load_file

    from cliptune.evaluation.prompt_results import Evaluated, PromptSpec, write_prompt_results

    ids = _fake_evaluation(tmp_path)
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "cat"}]
    anns = [{"id": i, "image_id": int(image_id), "category_id": 1 + i % 3, "bbox": [0, 0, 1, 1],
             "area": 1.0, "iscrowd": 0} for i, image_id in enumerate(ids)]
    instances = tmp_path / "instances_val2014.json"
    instances.write_text(json.dumps({"images": [{"id": int(i)} for i in ids],
                                     "annotations": anns, "categories": cats}))
    report = _figures_report()
    report["zero_shot"]["tasks"] = {"objects": {"classes": ["cat", "dog"], "labels": "coco"}}
    emb = load_file(str(tmp_path / "emb.safetensors"))
    captions = pd.read_parquet(tmp_path / "caps.parquet")["caption"].tolist()
    ev = Evaluated(emb["image"], ids, captions, emb["text_image_index"].numpy(), 0.05, 4)
    result = write_prompt_results("v", PromptSpec.of(report, "coco", instances),
                                  _fake_encode, ev, tmp_path)
    labels = load_file(str(tmp_path / "prompts.safetensors"))["objects.labels"].numpy()
    expected = np.array([[i % 3 == 2, i % 3 == 1] for i in range(len(ids))], dtype=np.uint8)
    np.testing.assert_array_equal(labels, expected)
    assert result["tasks"]["objects"]["accuracy"]["n_images"] == sum(expected.any(axis=1))
