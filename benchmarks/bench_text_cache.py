"""Text-embedding cache throughput: length-sorted batches vs unsorted batches vs a per-caption loop.

    python benchmarks/bench_text_cache.py [--captions 1024] [--batch-size 256] [--threads 2]
                                          [--loop-captions 100]

Encoder: the offline all-MiniLM-L6-v2 (``TextEncoder("offline-minilm")``, mean pooling),
the demo's text tower. Two caption sets:

* demo: captions of the synthetic demo scenes (cliptune.demo.dataset), whose lengths
  vary little;
* COCO-like: demo phrases joined to COCO's caption length distribution (mostly
  8-14 words, a 5% tail of 15-45 word captions), because sorting only helps when
  lengths vary.

Methods, all with the same tokenizer, model, pooling and max_length:
sorted = ``cliptune.models.text_encoder.encode_texts`` (what the cache stage runs);
unsorted = the same batches in caption order (the padding of a random batch);
per-caption loop = one forward per caption (the notebook approach), timed on the
first ``--loop-captions`` captions. The sorted and unsorted embeddings must agree.
The ideal speed-up of sorting is bounded by the padded/real token ratio, reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from bench_common import command_line, header, load_average, write_result


def demo_captions(n: int, seed: int = 0) -> list[str]:
    from cliptune.demo.captions import describe_scene
    from cliptune.demo.scenes import sample_scene

    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        out.extend(describe_scene(sample_scene(rng), rng, 5))
    return out[:n]


def coco_like_captions(n: int, seed: int = 0) -> list[str]:
    """Demo words joined to COCO-like lengths (words: median ~10, 5% long tail)."""
    rng = np.random.default_rng(seed)
    words = " ".join(demo_captions(2000, seed + 1)).lower().replace(".", "").split()
    lengths = np.where(rng.random(n) < 0.95, rng.integers(8, 15, n), rng.integers(15, 46, n))
    caps = []
    for length in lengths:
        start = rng.integers(0, len(words) - length)
        caps.append(" ".join(words[start:start + length]).capitalize() + ".")
    return caps


@torch.inference_mode()
def unsorted_batches(encoder, texts, batch_size) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        batch = encoder.tokenize(texts[start:start + batch_size], "cpu")
        out.append(encoder(**batch).float())
    return torch.cat(out)


@torch.inference_mode()
def per_caption(encoder, texts) -> torch.Tensor:
    return torch.cat([encoder(**encoder.tokenize([t], "cpu")).float() for t in texts])


def padding_stats(encoder, texts, batch_size) -> dict:
    lengths = np.array([len(ids) for ids in encoder.tokenizer(
        texts, truncation=True, max_length=encoder.max_length)["input_ids"]])
    real = lengths.sum()

    def padded(order):
        return sum(lengths[order[i:i + batch_size]].max() * len(order[i:i + batch_size])
                   for i in range(0, len(order), batch_size))

    sorted_order = np.argsort(-np.array([len(t) for t in texts]), kind="stable")
    return {"tokens_mean": lengths.mean(), "tokens_min": lengths.min(),
            "tokens_max": lengths.max(),
            "unsorted": padded(np.arange(len(texts))) / real,
            "sorted": padded(sorted_order) / real}


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captions", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256, help="text_encoder.batch_size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loop-captions", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--scale-captions", type=int, default=20000,
                    help="captions for the tokenizer-only padding estimate at scale")
    args = ap.parse_args(argv)
    load_start = load_average()
    torch.set_num_threads(args.threads)
    from cliptune.models.text_encoder import TextEncoder, encode_texts

    encoder = TextEncoder("offline-minilm", max_length=77)
    rows, notes, ok, gains = [], [], True, {}
    for name, texts in (("demo", demo_captions(args.captions)),
                        ("COCO-like", coco_like_captions(args.captions))):
        stats = padding_stats(encoder, texts, args.batch_size)
        encode_texts(encoder, texts[:64], batch_size=64, show_progress=False)  # warm-up
        res = {}
        # Interleave repeats of the two batched methods so load hits both alike.
        s_times, u_times = [], []
        for _ in range(args.repeats):
            s, emb_sorted = timed(lambda t=texts: encode_texts(
                encoder, t, batch_size=args.batch_size, show_progress=False), 1)
            u, emb_unsorted = timed(lambda t=texts: unsorted_batches(
                encoder, t, args.batch_size), 1)
            s_times.append(s)
            u_times.append(u)
        res["sorted"] = len(texts) / statistics.median(s_times)
        res["unsorted"] = len(texts) / statistics.median(u_times)
        loop_texts = texts[:args.loop_captions]
        loop_s, emb_loop = timed(lambda t=loop_texts: per_caption(encoder, t), 1)
        res["loop"] = len(loop_texts) / loop_s
        same = torch.allclose(emb_sorted, emb_unsorted, atol=1e-4)
        same_loop = torch.allclose(emb_sorted[:len(loop_texts)], emb_loop, atol=1e-4)
        ok &= same and same_loop
        gain = res["sorted"] / res["unsorted"]
        gains[name] = (gain, stats)
        rows += [
            f"| {name} | per-caption loop (batch 1) | {res['loop']:.0f} | - "
            f"| {res['sorted'] / res['loop']:.1f}x |",
            f"| {name} | unsorted batches of {args.batch_size} | {res['unsorted']:.0f} "
            f"| {stats['unsorted']:.2f} | {gain:.2f}x |",
            f"| {name} | **sorted batches (cliptune)** | **{res['sorted']:.0f}** "
            f"| {stats['sorted']:.2f} | 1.00x |",
        ]
        notes.append(
            f"- {name}: {len(texts)} captions, {stats['tokens_mean']:.1f} tokens on average "
            f"(min {stats['tokens_min']}, max {stats['tokens_max']}); sorted vs unsorted "
            f"{gain:.2f}x, per-caption loop -> sorted {res['sorted'] / res['loop']:.1f}x; "
            f"embeddings identical across methods (atol 1e-4): **{same and same_loop}**.")
    scale = {name: padding_stats(encoder, make(args.scale_captions), args.batch_size)
             for name, make in (("demo", demo_captions), ("COCO-like", coco_like_captions))}
    best_gain = max(g for g, _ in gains.values())
    met = best_gain >= 3
    lines = header("Text-embedding cache throughput", command_line(), load_start)
    lines += [
        f"Encoder offline all-MiniLM-L6-v2 (mean pooling, max_length 77) on {args.threads} CPU "
        f"threads, median of {args.repeats} interleaved runs for the batched methods. "
        "Padded/real = tokens the model computes (batch size x longest caption in the batch, "
        "summed) / real tokens; 1.00 means no padding.",
        "",
        "| captions | method | captions/s | padded/real tokens | sorted is faster by |",
        "|---|---|---|---|---|",
        *rows,
        "",
        *notes,
        "",
        f"- Target >= 3x over unsorted batches of the same size: **{'met' if met else 'NOT met'}**"
        f" (best {best_gain:.2f}x).",
    ]
    lines.append(
        "- Why sorting gains what it gains: it only removes padding, so its ideal gain is "
        "(unsorted padded/real) / (sorted padded/real): "
        + "; ".join(f"{k} {st['unsorted']:.2f} / {st['sorted']:.2f} = "
                    f"{st['unsorted'] / st['sorted']:.2f}x ideal, {g:.2f}x measured"
                    for k, (g, st) in gains.items())
        + f". With only {args.captions} captions each sorted batch of {args.batch_size} still "
        "spans a quarter of the length range. At COCO scale sorted batches are nearly "
        "padding-free; tokenizer-only padding at "
        f"{args.scale_captions:,} captions: "
        + "; ".join(f"{k} unsorted {st['unsorted']:.2f}, sorted {st['sorted']:.2f} -> ideal "
                    f"{st['unsorted'] / st['sorted']:.2f}x" for k, st in scale.items())
        + f". So the limit is the padding of a random batch: "
        f"{scale['COCO-like']['unsorted']:.1f}x the real tokens for COCO-like lengths (a 5% "
        "tail of long captions sets most batches' maximum), of which sorting by character "
        f"length (what encode_texts does) leaves {scale['COCO-like']['sorted']:.2f}x even at "
        "scale; >= 3x over unsorted batches of the same size would need more length "
        "variance than COCO captions have, or token-budget batches (which change the "
        "batch size).")
    lines.append(
        "- The per-caption loop is the notebook approach; on this oversubscribed machine its "
        "many tiny multi-threaded ops suffer most from waiting for descheduled threads, so "
        "its factor is inflated; even so, the cache computes each caption once per "
        "(encoder, split), not once per epoch.")
    write_result("text_cache.md", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
