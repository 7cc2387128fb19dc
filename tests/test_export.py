"""`snakemake export`: each model kind exported at toy scale, then loaded in a fresh
interpreter that imports only transformers / peft / onnxruntime (tests/export_consumer.py):
its embeddings equal cliptune's own to 1e-4 and its Recall@1 equals metrics.json."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_pairs import tiny_variant

from cliptune.config.load import DEFAULTS, deep_merge

CONSUMER = Path(__file__).with_name("export_consumer.py")
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]
PLACES = ["left", "right", "top", "bottom", "center"]


def write_split(folder: Path, prefix: str, n_images: int, seed: int, encode) -> dict[str, str]:
    """One split in the workflow's cache formats, two demo-vocabulary captions per image,
    its text cache embedded by ``encode`` (the variant's frozen text encoder)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n_images, dtype=np.int64) + 1000 * seed
    captions = []
    for _ in ids:
        c, s, p = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(PLACES)
        captions += [f"a {c} {s} on the {p}", f"the {s} is {c}"]
    caps = pd.DataFrame({"image_id": np.repeat(ids, 2),
                         "caption_id": np.arange(2 * n_images, dtype=np.int64) + 10_000 * seed,
                         "caption": captions, "file_name": [f"{i}.jpg" for i in np.repeat(ids, 2)],
                         "split": prefix})
    paths = {k: str(folder / f"{prefix}.{ext}") for k, ext in
             [("captions", "parquet"), ("text", "safetensors"), ("array", "npy"),
              ("index", "index.parquet")]}
    caps.to_parquet(paths["captions"], index=False)
    save_file({"embeddings": encode(captions).contiguous(),
               "caption_id": torch.from_numpy(caps["caption_id"].to_numpy().copy())},
              paths["text"])
    np.save(paths["array"], rng.integers(0, 256, (n_images, 32, 32, 3), dtype=np.uint8))
    pd.DataFrame({"row": np.arange(n_images), "image_id": ids, "file_name": [f"{i}.jpg" for i in ids],
                  "ok": True, "problem": ""}).to_parquet(paths["index"], index=False)
    return paths


def variant_of(kind: str, clip_dir: Path) -> dict:
    v = tiny_variant(epochs=1, batch_size=8, lr=1e-2, tensorboard=False)
    v["name"] = kind
    v["select_split"] = "val"
    v["eval"]["ks"] = [1, 5, 10]
    v["text_encoder"] = {"model": str(clip_dir), "pooling": "auto", "max_length": 32,
                         "batch_size": 64}
    clip = {"kind": "clip", "clip": {"model": str(clip_dir)}}
    if kind == "finetuned":
        v["model"] = deep_merge(v["model"], clip)
    elif kind == "lora":
        v["model"] = deep_merge(v["model"], deep_merge(clip, {"clip": {"lora": {
            "text": True, "vision": True, "r": 4, "alpha": 8}}}))
    elif kind == "zero_shot":
        v["model"] = deep_merge(v["model"], clip)
        v["train"]["epochs"] = 0
    elif kind == "dual_encoder":
        # A BERT vocabulary (the demo's MiniLM): the processor must still load and embed.
        v["text_encoder"] = copy.deepcopy(DEFAULTS["text_encoder"]) | {"max_length": 32}
        v["model"] = deep_merge(v["model"], {"kind": "dual_encoder", "dual_encoder": {
            "tokenizer": "offline-minilm", "embed_dim": 16,
            "vision": {"patch_size": 8, "width": 32, "depth": 1, "heads": 2},
            "text": {"width": 32, "depth": 1, "heads": 2, "max_length": 24}}})
        v["train"]["lr"] = 1e-3
    return v


def trained_run(kind: str, clip_dir: Path, tmp: Path):
    """Train ``kind`` one epoch, evaluate it, aggregate it beside a baseline: the run's files."""
    from cliptune.data.loading.pairs import PairData
    from cliptune.evaluation.evaluate import evaluate_variant
    from cliptune.export.model_card import RunFiles
    from cliptune.models.text_encoder import frozen_encoder_fn
    from cliptune.reporting.ablation import write_ablation
    from cliptune.training.trainer import train_variant

    v = variant_of(kind, clip_dir)
    # The text cache as the workflow builds it: the tiny CLIP's text tower, CLIP pooling.
    cache_encoder = {"model": str(clip_dir), "pooling": "auto", "max_length": 32,
                     "batch_size": 64}
    encode = frozen_encoder_fn(cache_encoder, torch.device("cpu"))
    data = {}
    for prefix, n, seed in (("train", 24, 1), ("val", 10, 2)):
        p = write_split(tmp / "data", prefix, n, seed, encode)
        data[prefix] = PairData.load(p["captions"], p["text"], p["array"], p["index"])
    run = tmp / "run"
    torch.manual_seed(0)
    train_variant(v, data["train"], data["val"], run, tmp / "state.pt", show_progress=False)
    evaluate_variant(v, run / "model.safetensors", data["val"], run, show_progress=False)
    bootstrap = {"resamples": 50, "seed": 0, "confidence": 0.95, "memory_mb": 64}
    write_ablation({"base": run / "metrics.json", kind: run / "metrics.json"},
                   {"base": run / "ranks.safetensors", kind: run / "ranks.safetensors"},
                   {"base": [run / "metrics.json"], kind: [run / "metrics.json"]}, "base",
                   bootstrap, tmp / "ablation.csv", tmp / "ablation.png",
                   tmp / "paired.csv", [1, 5, 10])
    (tmp / "data_report.json").write_text(json.dumps({
        "dataset": "toy", "source": "demo", "splits": {
            s: {"images": d.n_images, "captions": len(d.captions)} for s, d in data.items()}}))
    files = RunFiles(run / "metrics.json", run / "train_report.json", tmp / "ablation.csv",
                     tmp / "paired.csv", tmp / "data_report.json")
    return v, data["val"], files, run


def consumer_job(folder: Path, data, tmp: Path, name: str, lora_base: Path | None = None,
                 card: bool = False) -> dict:
    """One folder for export_consumer.py, with the evaluation split written beside it;
    ``card``: also run the folder's model-card snippet on a photo.jpg placed there."""
    from PIL import Image

    images = np.ascontiguousarray(data.pixels[data.image_rows])
    np.save(tmp / f"{name}.images.npy", images)
    image_of = np.searchsorted(data.image_rows, data.caption_image_row)
    (tmp / f"{name}.captions.json").write_text(json.dumps({
        "captions": data.captions["caption"].tolist(), "image_of_caption": image_of.tolist()}))
    if card:
        Image.new("RGB", (50, 40), (200, 30, 30)).save(folder / "photo.jpg")
    return {"folder": str(folder), "images": str(tmp / f"{name}.images.npy"),
            "captions": str(tmp / f"{name}.captions.json"), "out": str(tmp / f"{name}.npz"),
            "lora_base": str(lora_base) if lora_base else None, "card": card}


def run_consumer(jobs: list[dict], tmp: Path) -> dict[str, dict]:
    """export_consumer.py over ``jobs`` in one clean interpreter (cliptune unreachable):
    each job's embeddings and Recall@1 by its out path, or its traceback and folder."""
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # cliptune unreachable
    try:
        proc = subprocess.run([sys.executable, str(CONSUMER), str(tmp / "jobs.json")],
                              capture_output=True, text=True, env=env, cwd=tmp)
    finally:
        for job in jobs:
            Path(job["folder"], "photo.jpg").unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for job in jobs:
        error = Path(job["out"] + ".error")
        results[job["out"]] = ({"error": error.read_text(), "folder": job["folder"]}
                               if error.exists() else dict(np.load(job["out"])))
    return results


def consumed(result: dict) -> dict:
    """A consumer result that must have succeeded; its folder and traceback otherwise."""
    assert "error" not in result, f"export_consumer.py on {result['folder']}:\n{result['error']}"
    return result


def assert_matches_cliptune(got: dict, run: Path) -> None:
    ours = load_file(str(run / "embeddings.safetensors"))
    metrics = json.loads((run / "metrics.json").read_text())
    np.testing.assert_allclose(got["image"], ours["image"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["text"], ours["text"].numpy(), atol=1e-4, rtol=0)
    assert got["r1"][0] == pytest.approx(metrics["i2t_R@1"], abs=1e-9)
    assert got["r1"][1] == pytest.approx(metrics["t2i_R@1"], abs=1e-9)


KINDS = ["trunk_head", "finetuned", "lora", "zero_shot", "dual_encoder"]


@dataclass
class Exported:
    variant: dict
    run: Path
    out: Path
    files: object  # cliptune.export.model_card.RunFiles
    manifest: dict
    got: dict  # what the consumer embedded and recalled
    plain: dict | None  # lora: the pretrained base alone, read the same way


@pytest.fixture(scope="module")
def exported(tiny_clip_dir, tmp_path_factory) -> dict[str, Exported]:
    """Every kind trained, evaluated and exported, then all read by one consumer run
    (each interpreter start imports torch and transformers)."""
    from cliptune.export.variant_export import export_variant

    built, jobs = {}, {}
    for kind in KINDS:
        tmp = tmp_path_factory.mktemp(f"export_{kind}")
        v, val, files, run = trained_run(kind, tiny_clip_dir, tmp)
        out = tmp / "export" / kind
        manifest = export_variant(v, run / "model.safetensors", val, files, "base", out)
        built[kind] = (v, run, out, files, manifest)
        jobs[kind] = consumer_job(out, val, tmp, kind, tiny_clip_dir if kind == "lora" else None,
                                  card=True)
        if kind == "lora":
            jobs["plain"] = consumer_job(tiny_clip_dir_export(tiny_clip_dir, tmp), val, tmp,
                                         "plain")
    results = run_consumer(list(jobs.values()), tmp_path_factory.mktemp("consumer"))
    return {kind: Exported(*built[kind], got=results[jobs[kind]["out"]],
                           plain=results[jobs["plain"]["out"]] if kind == "lora" else None)
            for kind in KINDS}


@pytest.mark.xdist_group("export_kinds")
@pytest.mark.parametrize("kind", KINDS)
def test_export_loads_without_cliptune_and_embeds_as_cliptune(kind, exported):
    e = exported[kind]
    got = consumed(e.got)
    assert_matches_cliptune(got, e.run)
    card = (e.out / "README.md").read_text()
    assert card.startswith("---\n") and "model-index" in card
    metrics = json.loads(e.files.metrics.read_text())
    assert f"{metrics['i2t_R@1']:.1f} [" in card
    if kind == "trunk_head":
        assert e.manifest["format"] == "onnx" and (e.out / "image_tower.onnx").is_file()
        assert e.manifest["text_tower"]["pooling"] == "clip"
    else:
        assert (e.out / "config.json").is_file() and (e.out / "preprocessor_config.json").is_file()
    if kind == "lora":
        # peft's adapter on the pretrained base gives the merged model's embeddings.
        np.testing.assert_allclose(got["peft_image"], got["image"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["peft_text"], got["text"], atol=1e-4, rtol=0)
        base = json.loads((e.out / "lora_adapter" / "adapter_config.json").read_text())
        assert base["base_model_name_or_path"] == e.variant["model"]["clip"]["model"]
        # The adapters matter: the base model alone embeds otherwise.
        plain = consumed(e.plain)
        assert np.abs(plain["text"] - got["text"]).max() > 1e-3


def tiny_clip_dir_export(clip_dir: Path, tmp: Path) -> Path:
    """The pretrained tiny CLIP as a folder the consumer reads (no adapters)."""
    folder = tmp / "plain"
    if not folder.exists():
        import shutil

        shutil.copytree(clip_dir, folder)
        from transformers import CLIPImageProcessor

        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
                           ).save_pretrained(folder)
        (folder / "export.json").write_text(json.dumps({"format": "transformers"}))
    return folder


def test_card_numbers_come_from_the_run_files(tiny_clip_dir, tmp_path):
    from cliptune.export.model_card import RunFiles, render_card

    v, _, files, _ = trained_run("trunk_head", tiny_clip_dir, tmp_path)

    def card(f: RunFiles) -> str:
        return render_card(v, "base", f, "onnx", ["x"], "print()", ["n"])

    before = card(files)
    metrics = json.loads(files.metrics.read_text())
    report = json.loads(files.train_report.read_text())
    assert f"| 1 | {metrics['i2t_R@1']:.1f} [" in before
    assert f"{report['wall_seconds']:.1f} s on {report['device']}" in before
    ablation = pd.read_csv(files.ablation)
    assert f"[{ablation.loc[1, 'i2t_R@1_lo']:.1f}, {ablation.loc[1, 'i2t_R@1_hi']:.1f}]" in before
    # A changed metric file changes the card.
    changed = tmp_path / "changed"
    changed.mkdir()
    metrics["i2t_R@1"] = 87.654
    (changed / "metrics.json").write_text(json.dumps(metrics))
    ablation.loc[1, "i2t_R@1_lo"] = 12.345
    ablation.to_csv(changed / "ablation.csv", index=False)
    paired = pd.read_csv(files.paired)
    paired.loc[paired["metric"] == "rsum", "diff"] = 4.25
    paired.to_csv(changed / "paired.csv", index=False)
    after = card(RunFiles(changed / "metrics.json", files.train_report, changed / "ablation.csv",
                          changed / "paired.csv", files.data_report))
    assert "| 1 | 87.7 [12.3," in after and "| rsum | +4.2 |" in after
    assert after != before
    # Read by key: a run file without the key fails, naming it.
    del metrics["reported_on"]
    (changed / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(KeyError, match="reported_on"):
        card(RunFiles(changed / "metrics.json", files.train_report, files.ablation,
                      files.paired, files.data_report))


def test_missing_onnx_names_the_extra(monkeypatch):
    import builtins

    from cliptune.export.onnx_tower import OnnxExtraMissingError, require_onnx

    real = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'", name="onnxruntime")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(OnnxExtraMissingError, match=r"cliptune\[export\]"):
        require_onnx()


@pytest.mark.slow
def test_snakemake_export_of_the_toy_run_baseline(toy_run, repo, tmp_path):
    """`snakemake export` of the suite's finished toy run (conftest.TOY_RUN): the baseline
    (ResNet-18 + head, frozen offline MiniLM) loads with onnxruntime + transformers alone."""
    from conftest import TOY_RUN, snakemake

    from cliptune.config.load import load_config
    from cliptune.data.caches.keys import captions_paths, image_paths, text_path
    from cliptune.data.loading.pairs import PairData

    work = toy_run.workdir
    snakemake(work, repo, "results/tiny/export/baseline")
    out, run = work / "results/tiny/export/baseline", work / "results/tiny/variants/baseline"
    full = load_config(TOY_RUN)
    images = image_paths(full["dataset"], "val", full["image_size"])
    val = PairData.load(work / captions_paths(full["dataset"], "val")["captions"],
                        work / text_path(full["dataset"], "val", full["text_encoder"]),
                        work / images["array"], work / images["index"])
    assert json.loads((out / "export.json").read_text())["text_tower"]["pooling"] == "mean"
    job = consumer_job(out, val, tmp_path, "baseline", card=True)
    assert_matches_cliptune(consumed(run_consumer([job], tmp_path)[job["out"]]), run)
    card = (out / "README.md").read_text()
    assert "resnet18" in card and "baseline" in card
