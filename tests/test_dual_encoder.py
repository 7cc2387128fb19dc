"""The from-scratch dual encoder (model.kind: dual_encoder): CLIP's BPE tokenizer built
offline, the architecture knobs of model.dual_encoder (MLP ratio, dropout), CLIP pooling,
and the Study A config (config/flickr30k_scratch.yaml) carrying the spec's values."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml
from tiny_pairs import tiny_variant

from cliptune.config.load import DEFAULTS, deep_merge, load_config, resolve_variant
from cliptune.models.clip_bpe import VOCAB_SIZE, clip_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "A man in a red shirt, climbing a rock!",
    "Two dogs play in the snow.",
    "it's  1,234 items;   really?! (yes) -- 50% off @home #tag",
    "Café crème, naïve façade: Ünïcödé, 日本語 and an emoji 😀",
    "a " * 100,  # longer than the 77-token context: truncated, EOS kept last
]


def dual_variant(tokenizer, **dual) -> dict:
    """A resolved dual-encoder variant with tiny towers (schema defaults for the rest)."""
    v = tiny_variant(epochs=1, batch_size=4, tensorboard=False)
    v["text_encoder"] = copy.deepcopy(DEFAULTS["text_encoder"])
    v["model"] = deep_merge(v["model"], {"kind": "dual_encoder", "dual_encoder": deep_merge({
        "tokenizer": str(tokenizer), "embed_dim": 16,
        "vision": {"patch_size": 8, "width": 32, "depth": 2, "heads": 2},
        "text": {"width": 32, "depth": 2, "heads": 2, "max_length": 77}}, dual)})
    v["image_size"] = 32
    return v


def test_clip_bpe_matches_open_clip():
    import open_clip

    tok = clip_bpe_tokenizer()
    assert len(tok) == VOCAB_SIZE == 49408
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    ours = tok(CAPTIONS, padding="max_length", truncation=True, max_length=77,
               return_tensors="pt")["input_ids"]
    ref = open_clip.tokenize(CAPTIONS)  # pads with 0 after <|endoftext|>
    for mine, theirs in zip(ours, ref, strict=True):
        n = int((theirs != 0).sum())
        assert mine[:n].tolist() == theirs[:n].tolist()
        assert set(mine[n:].tolist()) <= {tok.pad_token_id}
    assert ref[-1, -1] == ours[-1, -1] == tok.eos_token_id  # truncated, EOS kept


def test_a_local_clip_tokenizer_folder_gives_the_same_ids(tmp_path):
    """What the docs offer offline: a folder with CLIP's tokenizer files, either as
    `hf download ... --include '*.json' '*.txt'` leaves it or only vocab.json + merges.txt."""
    import json

    from cliptune.models.clip_bpe import _clip_vocab
    from cliptune.models.hf_clip import _scratch_tokenizer

    clip_bpe_tokenizer().save_pretrained(tmp_path / "saved")
    vocab, merges = _clip_vocab()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "vocab.json").write_text(json.dumps(vocab))
    (bare / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    want = clip_bpe_tokenizer()(CAPTIONS, truncation=True, max_length=77)["input_ids"]
    for folder in (tmp_path / "saved", bare):
        tok = _scratch_tokenizer(str(folder))
        assert len(tok) == VOCAB_SIZE and tok.pad_token == "<|endoftext|>"
        assert tok(CAPTIONS, truncation=True, max_length=77)["input_ids"] == want


def test_pooling_is_cls_for_vision_and_first_eos_for_text(tiny_clip_dir):
    from cliptune.models.hf_clip import HFClip

    model = HFClip(dual_variant(tiny_clip_dir)).eval()
    clip, tok = model.clip, model.tokenizer
    batch = tok(["a red circle", "two blue squares on the left"], padding=True,
                return_tensors="pt")
    ids = batch["input_ids"]
    assert tok.pad_token_id == tok.eos_token_id  # padding repeats EOS: the first one counts
    with torch.no_grad():
        out = clip.text_model(**batch)
        first_eos = (ids == tok.eos_token_id).int().argmax(dim=-1)
        assert first_eos[0] < ids.shape[1] - 1  # the short caption is padded with EOS
        expect = out.last_hidden_state[torch.arange(2), first_eos]
        assert torch.equal(out.pooler_output, expect)
        pixels = torch.randn(2, 3, 32, 32)
        vis = clip.vision_model(pixel_values=pixels)
        cls = clip.vision_model.post_layernorm(vis.last_hidden_state[:, 0])
        assert torch.allclose(vis.pooler_output, cls)


def test_mlp_ratio_and_dropout_are_applied(tiny_clip_dir):
    from transformers import CLIPModel

    from cliptune.models.hf_clip import HFClip

    v = dual_variant(tiny_clip_dir, vision={"mlp_ratio": 2.0, "dropout": 0.3},
                     text={"mlp_ratio": 3.0, "dropout": 0.3})
    model = HFClip(v)
    cfg = model.clip.config
    assert cfg.vision_config.intermediate_size == 64 and cfg.text_config.intermediate_size == 96
    assert cfg.vision_config.attention_dropout == cfg.text_config.attention_dropout == 0.3
    # The dropout hooks add no parameters: the weights load into a plain CLIPModel.
    assert set(model.clip.state_dict()) == set(CLIPModel(cfg).state_dict())
    images = torch.rand(4, 3, 32, 32)
    texts = ["a red circle", "a blue square", "two shapes", "a star"]
    model.train()
    torch.manual_seed(0)
    a, b = model.embed_images(images), model.embed_images(images)
    assert not torch.allclose(a, b)
    assert not torch.allclose(model.embed_texts(texts), model.embed_texts(texts))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.embed_images(images), model.embed_images(images))
        assert torch.equal(model.embed_texts(texts), model.embed_texts(texts))
    # Beyond HF's attention dropout: each block's MLP and attention outputs are dropped.
    model.train()
    for layer in [*model.clip.text_model.encoder.layers, *model.clip.vision_model.encoder.layers]:
        for branch in (layer.mlp, layer.self_attn.out_proj):
            zeros = (branch(torch.randn(8, 50, 32)) == 0).float().mean().item()
            assert 0.2 < zeros < 0.4, zeros
    plain = HFClip(dual_variant(tiny_clip_dir)).train()  # dropout 0: deterministic in training
    assert torch.equal(plain.embed_images(images), plain.embed_images(images))


def test_study_a_config_has_the_spec_architecture():
    from cliptune.models.hf_clip import scratch_config

    cfg = load_config(yaml.safe_load((REPO / "config" / "flickr30k_scratch.yaml").read_text()))
    v = resolve_variant(cfg, cfg["baseline"])
    dual, train = v["model"]["dual_encoder"], v["train"]
    assert dual["tokenizer"] == "clip-bpe"
    clip = scratch_config(dual, clip_bpe_tokenizer(), v["image_size"])
    vis, text = clip.vision_config, clip.text_config
    assert (vis.image_size, vis.patch_size, vis.hidden_size, vis.num_hidden_layers,
            vis.num_attention_heads, vis.intermediate_size) == (224, 16, 768, 12, 12, 3072)
    assert (text.max_position_embeddings, text.vocab_size, text.hidden_size,
            text.num_hidden_layers, text.num_attention_heads,
            text.intermediate_size) == (77, 49408, 512, 8, 8, 2048)
    assert text.eos_token_id == text.pad_token_id == 49407 and clip.projection_dim == 512
    assert v["text_encoder"]["max_length"] == 77
    assert (train["loss"], train["temperature"], train["batch_size"], train["lr"],
            train["weight_decay"], train["epochs"], train["tensorboard"]) == (
        "infonce", 0.07, 64, 1e-4, 1e-4, 20, True)
    # The spec's loader augments (transforms unnamed): crop, flip and jitter on train.
    aug = train["augment"]
    assert aug["enabled"] and aug["scale"] == [0.8, 1.0] and aug["flip"] == 0.5
    # Selected on the val holdout, reported on test: never the same images.
    assert cfg["dataset"]["selection"]["split"] == "val" and v["eval"]["split"] == "test"
