"""Cost curves of the data and evaluation stages on generated COCO-layout data.

    python benchmarks/bench_scale.py [--sizes 1000,4000,20000] [--threads 1]
                                     [--full-retrieval | --no-full-retrieval]

For each size (images; five captions each) it generates a COCO 2014-layout folder under
benchmarks/_work/scale/ (640x480 JPEGs named COCO_val2014_<id>.jpg, and
annotations/captions_val2014.json with COCO's info / licenses / images / annotations
structure), then runs each stage through the real stage code, each in a fresh
subprocess so its peak RSS is its own:

* ``captions``: cliptune.data.sources.captions.build_captions (JSON -> tidied Parquet);
* ``image_cache``: cliptune.data.caches.images.build_image_cache at 224 px (``--threads``
  decode workers);
* ``text_embeddings``: cliptune.data.caches.text.build_text_cache with the offline MiniLM
  on the CPU;
* ``evaluate``: retrieval on stored embeddings: the text cache just written against
  image embeddings of the same width (random unit vectors standing in for the image
  tower's output), ``retrieval_metrics_and_ranks`` (every metric, the per-query ranks)
  and the cluster-bootstrap intervals of the aggregate step (1,000 resamples), beside
  the bare matrix product computing the same scores (the limit).

It records wall time, peak RSS (VmHWM of the stage process, or of its largest worker
when larger) and disk of each stage's outputs, fits time = a * n^b per stage, and
extrapolates to full COCO 2014 (123,287 images, 616,767 captions; evaluation on
val2014's 40,504 x 202,654) on 2 and on 16 cores. ``--full-retrieval`` also times the
lab's real evaluation size, 40,504 images x 202,654 captions of random 512-d unit
vectors, with its peak memory beside what the full score matrix would need.
Writes benchmarks/results/scale.md and scale.png (log-log).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_common import RESULTS, WORK, command_line, header, load_average, write_result

HERE = Path(__file__).resolve().parent
STAGES = ("captions", "image_cache", "text_embeddings", "evaluate")
COCO_IMAGES = 82_783 + 40_504
COCO_CAPTIONS = 616_767
VAL_IMAGES, VAL_CAPTIONS = 40_504, 202_654
DISTINCT_JPEGS = 256  # generated once; the rest are byte copies (same decode cost, real files)
VOCAB = [
    "a", "an", "the", "man", "woman", "person", "child", "dog", "cat", "horse", "bus",
    "train", "car", "truck", "bike", "plate", "pizza", "table", "kitchen", "street",
    "field", "beach", "room", "sign", "clock", "bird", "elephant", "giraffe", "zebra",
    "boat", "red", "blue", "green", "white", "black", "yellow", "large", "small", "young",
    "old", "two", "three", "several", "group", "of", "on", "in", "with", "near", "next",
    "to", "under", "over", "sitting", "standing", "riding", "holding", "eating", "walking",
    "looking", "playing", "parked", "flying", "laying", "top", "front", "side", "while"
]


# ---------------------------------------------------------------- data generation
def generate_coco(root: Path, n: int, seed: int = 0) -> None:
    """COCO 2014-layout val2014 folder with ``n`` 640x480 JPEGs and five captions each."""
    from bench_input_pipeline import make_jpegs

    ann = root / "annotations" / "captions_val2014.json"
    if ann.exists():
        return
    pool = WORK / "scale" / "jpeg_pool"
    names = make_jpegs(pool, DISTINCT_JPEGS, seed)
    folder = root / "val2014"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(n):
        image_id = 100_000 + i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        if not (folder / name).exists():
            shutil.copyfile(pool / names[i % DISTINCT_JPEGS], folder / name)
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": 480,
                       "width": 640, "date_captured": "2013-11-14 11:18:45",
                       "flickr_url": "", "id": image_id})
        for j in range(5):
            words = rng.choice(VOCAB, rng.integers(8, 15))
            annotations.append({"image_id": image_id, "id": image_id * 5 + j,
                                "caption": " ".join(words).capitalize() + "."})
    ann.parent.mkdir(parents=True, exist_ok=True)
    tmp = ann.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "info": {"description": "cliptune bench_scale (COCO 2014 captions layout)",
                 "url": "", "version": "1.0", "year": 2014, "contributor": "cliptune",
                 "date_created": "2017/09/01"},
        "licenses": [{"url": "", "id": 1, "name": "synthetic"}],
        "images": images, "annotations": annotations}))
    os.replace(tmp, ann)


# ---------------------------------------------------------------- one stage (child process)
def _peak_rss() -> int:
    """Bytes: the larger of this process's VmHWM and its largest finished child's."""
    own = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            own = int(line.split()[1]) * 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return max(own, child)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (decode workers): what a
    stage costs on idle cores, which other jobs on a shared machine do not inflate."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _bare_product_cpu(a, b) -> float:
    """CPU seconds of every score of both directions in blocks of 1,024 queries: what any
    exact retrieval must compute, with nothing else."""
    c0 = _cpu()
    for q, c in ((a, b), (b, a)):
        for s in range(0, len(q), 1024):
            (q[s:s + 1024] @ c.T).max()
    return _cpu() - c0


def run_stage(stage: str, root: Path, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    res = root / "results"
    res.mkdir(exist_ok=True)
    caps = res / "captions_val.parquet"
    from cliptune.data.caches.images import build_image_cache
    from cliptune.data.caches.text import build_text_cache
    from cliptune.data.sources.captions import build_captions

    outputs: list[Path] = []
    extra = {}
    t0, c0 = time.perf_counter(), _cpu()  # imports are paid before: the stage's own work
    if stage == "captions":
        build_captions(root, "val2014", "val", caps)
        outputs = [caps]
    elif stage == "image_cache":
        arr, idx = res / "val_224.npy", res / "val_224.index.parquet"
        build_image_cache(caps, root, 224, arr, idx, workers=threads)
        outputs = [arr, idx]
    elif stage == "text_embeddings":
        out = res / "text_val.safetensors"
        build_text_cache(caps, out, "offline-minilm", device="cpu")
        outputs = [out]
    elif stage == "evaluate":
        import pandas as pd

        from cliptune.config.load import DEFAULTS
        from cliptune.data.caches.text import load_text_cache
        from cliptune.evaluation.bootstrap import Ranks, metric_intervals
        from cliptune.evaluation.retrieval_metrics import retrieval_metrics_and_ranks

        captions = pd.read_parquet(caps)
        text = load_text_cache(res / "text_val.safetensors", captions)
        ids, text_image = np.unique(captions["image_id"].to_numpy(), return_inverse=True)
        g = torch.Generator().manual_seed(0)
        image = torch.nn.functional.normalize(torch.randn(len(ids), text.shape[1], generator=g),
                                              dim=1)
        t0, c0 = time.perf_counter(), _cpu()  # scoring + bootstrap, as evaluate/aggregate do
        _, r_i2t, r_t2i = retrieval_metrics_and_ranks(image, text, torch.from_numpy(text_image),
                                                      ks=tuple(DEFAULTS["eval"]["ks"]))
        ranks = Ranks.of(r_i2t, r_t2i, torch.from_numpy(text_image), ids,
                         captions["caption_id"].to_numpy(np.int64))
        metric_intervals(ranks, DEFAULTS["eval"]["ks"], DEFAULTS["bootstrap"])
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
        extra["bare_product_cpu"] = _bare_product_cpu(image, text)
        return {"seconds": seconds, "cpu": cpu, "peak_rss": _peak_rss(), "disk": 0, **extra}
    else:
        raise ValueError(stage)
    seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"seconds": seconds, "cpu": cpu, "peak_rss": _peak_rss(),
            "disk": sum(p.stat().st_size for p in outputs)}


def full_retrieval(threads: int, blocks: int) -> dict:
    """40,504 x 202,654 random 512-d unit vectors through cliptune's ranking passes.

    Scoring a query block against all candidates costs the same for every block, so
    ``blocks`` > 0 times that many query blocks of each direction (``i2t_pass`` over the
    first images against all captions, ``t2i_pass`` over the first captions against all
    images) and scales by the block counts; 0 runs the whole
    ``retrieval_metrics_and_ranks``. The peak memory is the measured one either way:
    it is the score budget's, whatever the number of blocks."""
    import torch

    from cliptune.evaluation.retrieval_metrics import retrieval_metrics_and_ranks
    from cliptune.retrieval import DEFAULT_SCORE_MEMORY, block_rows, i2t_pass, t2i_pass

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(VAL_IMAGES, 512, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(VAL_CAPTIONS, 512, generator=g), dim=1)
    idx = torch.arange(VAL_CAPTIONS) % VAL_IMAGES
    mem = DEFAULT_SCORE_MEMORY  # eval.score_memory_mb's default
    # The query rows per block the evaluation uses in each direction.
    bs_i2t, bs_t2i = block_rows(mem, VAL_CAPTIONS), block_rows(mem, VAL_IMAGES)
    n_i2t, n_t2i = -(-VAL_IMAGES // bs_i2t), -(-VAL_CAPTIONS // bs_t2i)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here: the evaluation's own
    base = _peak_rss()
    c0 = _cpu()
    if blocks == 0:
        retrieval_metrics_and_ranks(img, txt, idx, score_memory=mem)
        cpu = _cpu() - c0
    else:
        k = min(blocks, n_i2t)
        i2t_pass(img[:k * bs_i2t], txt, idx, mem, kmax=10, show=False)
        c_i2t = (_cpu() - c0) * n_i2t / k
        c0 = _cpu()
        t2i_pass(img, txt[:k * bs_t2i], idx[:k * bs_t2i], mem, show=False)
        cpu = c_i2t + (_cpu() - c0) * n_t2i / k
    peak = _peak_rss()
    if blocks == 0:
        bare = _bare_product_cpu(img, txt)
    else:
        bare = 0.0
        for q, c, n, bs in ((img, txt, n_i2t, bs_i2t), (txt, img, n_t2i, bs_t2i)):
            c0 = _cpu()
            for s in range(0, k * bs, bs):
                (q[s:s + bs] @ c.T).max()
            bare += (_cpu() - c0) * n / k
    return {"cpu": cpu, "peak_rss": peak, "inputs_rss": base, "bare_product_cpu": bare,
            "blocks_timed": blocks, "blocks_total": [n_i2t, n_t2i],
            "block_rows": [bs_i2t, bs_t2i]}


def child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args[-1]), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(Path(__file__)), "--child", *map(str, args)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{args}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- fit + report
def fit(ns: list[int], ts: list[float]) -> tuple[float, float, float]:
    """(fixed seconds f, seconds per image c, exponent b): t = f + c * n by least squares
    (a stage pays a fixed start-up, e.g. loading the text encoder), and b the log-log
    slope of t between the two largest sizes, where fixed costs weigh least (1 = linear
    growth, 2 = images x captions)."""
    c, f = np.polyfit(ns, ts, 1)
    f = max(float(f), 0.0)
    b = np.log(ts[-1] / ts[-2]) / np.log(ns[-1] / ns[-2])
    return f, float(c), float(b)


def plot(sizes: list[int], table: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for stage in STAGES:
        ax.loglog(sizes, [table[n][stage]["cpu"] for n in sizes], "o-", label=stage)
    ax.set_xlabel("images (5 captions each)")
    ax.set_ylabel("CPU seconds (= wall on one idle core)")
    ax.set_title("cliptune stage cost vs data size (2 shared cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def _hms(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind = argv[1]
        result = (full_retrieval(int(argv[2]), int(argv[3])) if kind == "full-retrieval"
                  else run_stage(kind, Path(argv[2]), int(argv[3])))
        print(json.dumps(result))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,4000,20000",
                    help="images per generated dataset, comma-separated (>= 3 sizes to fit)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads and image-cache workers per stage")
    ap.add_argument("--full-retrieval", action=argparse.BooleanOptionalAction, default=True,
                    help="also time evaluation at 40,504 x 202,654 (about 2 x 8 TFLOP on CPU)")
    ap.add_argument("--full-retrieval-blocks", type=int, default=0,
                    help="time this many query blocks per direction at 40k x 200k and scale "
                         "by the block count (0: the whole evaluation)")
    ap.add_argument("--reuse", action="store_true",
                    help="take a size's stage results from its earlier run (stages.json) "
                         "instead of measuring again")
    ap.add_argument("--full-retrieval-json", type=Path, default=None,
                    help="read the 40k x 200k result from this file (the JSON line of "
                         "`bench_scale.py --child full-retrieval THREADS`) instead of running it")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(sizes) < 3:
        ap.error("--sizes needs at least three sizes to fit a growth exponent")
    load_start = load_average()
    table: dict[int, dict] = {}
    loads: dict[int, str] = {}
    for n in sizes:
        root = WORK / "scale" / f"coco_{n}"
        saved = root / "stages.json"
        if args.reuse and saved.exists():
            table[n], loads[n] = (json.loads(saved.read_text())[k] for k in ("stages", "load"))
            continue
        t0 = time.perf_counter()
        generate_coco(root, n)
        shutil.rmtree(root / "results", ignore_errors=True)  # every stage runs from scratch
        print(f"[scale] {n} images generated in {time.perf_counter() - t0:.0f} s", flush=True)
        table[n] = {}
        for stage in STAGES:
            table[n][stage] = child([stage, root, args.threads])
            print(f"[scale] {n} {stage}: {table[n][stage]}", flush=True)
        loads[n] = load_average()
        saved.write_text(json.dumps({"stages": table[n], "load": loads[n]}))
    if args.full_retrieval_json is not None:  # measured by a separate `--child` run
        full = json.loads(args.full_retrieval_json.read_text())
    else:
        full = (child(["full-retrieval", args.threads, args.full_retrieval_blocks])
                if args.full_retrieval else None)
        if full is not None:  # kept for --full-retrieval-json
            (WORK / "scale" / "full_retrieval.json").write_text(json.dumps(full))

    RESULTS.mkdir(exist_ok=True)
    plot(sizes, table, RESULTS / "scale.png")
    lines = header("Stage cost vs data size (generated COCO-layout data)", command_line(),
                   load_start)
    lines += [
        "Every stage ran in its own subprocess with "
        f"{args.threads} torch thread(s) / image-cache worker(s). Costs are **CPU seconds** of "
        "the stage process and its decode workers: on a 2-core VM shared with other jobs (the "
        "load average after each size is listed below) wall time carries the contention, "
        "CPU time does not, and with one thread it is the stage's wall time on one idle core. "
        "Wall seconds stand beside it. "
        + ("With --reuse a size's stage results are those of its earlier run "
           "(`_work/scale/coco_<n>/stages.json`), measured under the load listed for it. "
           if args.reuse else "")
        + f"Sizes: {', '.join(f'{n:,}' for n in sizes)} images "
        f"({'' if sizes[-1] >= 20_000 else 'the 20,000-image size was not reached this session: '}"
        f"largest {sizes[-1]:,}), five captions each; {DISTINCT_JPEGS} distinct generated "
        "640x480 JPEGs (q90) copied to every file name, so decoding costs what COCO's do.",
        "",
        "| images | captions | stage | CPU (s) | wall (s) | CPU per image (ms) | peak RSS (GiB) "
        "| disk (MiB) | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        for stage in STAGES:
            r = table[n][stage]
            note = ""
            if stage == "evaluate":
                bare = r["bare_product_cpu"]
                note = (f"bare score product {bare:.2f} CPU s: {r['cpu'] / bare:.1f}x "
                        f"({'within' if r['cpu'] <= 2 * bare else '**beyond**'} 2x)"
                        if bare > 0 else "bare score product too fast to time")
            lines.append(f"| {n:,} | {5 * n:,} | {stage} | {r['cpu']:.2f} | {r['seconds']:.2f} | "
                         f"{1000 * r['cpu'] / n:.2f} | {_gib(r['peak_rss'])} | "
                         f"{r['disk'] / 2**20:.1f} | {note} |")
    lines += ["", "Load average after each size: " + "; ".join(
        f"{n:,}: {loads[n]}" for n in sizes) + ".", "", "![stage cost](scale.png)", "",
        "## Growth and full COCO 2014", "",
        "Fit per stage over the sizes above: CPU time = f + c * n (f: fixed start-up such as "
        "loading the text encoder; c: seconds per image) by least squares, and the growth "
        "exponent b: the log-log slope of t between the two largest sizes, where fixed costs "
        "weigh least (1 = linear, 2 = images x captions). "
        f"Extrapolation of the data stages to all of COCO 2014 ({COCO_IMAGES:,} images, "
        f"{COCO_CAPTIONS:,} captions) = f + c * {COCO_IMAGES:,}. Evaluation grows with images "
        f"x captions, so its full-size figure is the val2014 ({VAL_IMAGES:,} x "
        f"{VAL_CAPTIONS:,}) run measured below, plus the bootstrap, not an extrapolation. "
        "Every stage was measured with one thread / worker (the load left about one core "
        "per job); 2 and 16 cores = that figure divided by 2 and 16 for image_cache, "
        "text_embeddings and evaluate (decode workers, torch threads: ideal scaling, an upper "
        "bound on the speed-up); captions stays serial (one JSON parse). At these small sizes the "
        "fixed costs are a large share of each time, so treat the extrapolations as +-30%.",
        "",
        "| stage | fixed f (s) | c: ms per image | exponent b | full COCO 2014, 1 core "
        "| 2 cores | 16 cores |",
        "|---|---|---|---|---|---|---|"]
    full_times = {}
    for stage in STAGES:
        f, c, b = fit(sizes, [table[n][stage]["cpu"] for n in sizes])
        if stage == "evaluate":
            if full is None:
                continue
            est = full["cpu"] + table[sizes[-1]][stage]["cpu"]
            where = "val2014 (measured below)"
        else:
            est = f + c * COCO_IMAGES
            where = "all images"
        full_times[stage] = est
        serial = stage == "captions"
        lines.append(f"| {stage} | {f:.1f} | {1000 * c:.2f} | {b:.2f} | {_hms(est)} ({where}) | "
                     f"{_hms(est if serial else est / 2)} | {_hms(est if serial else est / 16)} |")
    dominant = max(full_times, key=full_times.get)
    lines += ["", f"- Dominant stage at full COCO size: **{dominant}** "
              f"({_hms(full_times[dominant])} of {_hms(sum(full_times.values()))} with one thread).",
              "- Peak RSS per stage at each size is in the first table: the caches stream "
              "(image_cache writes a memory-mapped array, text_embeddings holds only the "
              "M x 384 float32 result), and evaluation holds blocks of scores and of bootstrap "
              "resamples sized to fixed budgets (`eval.score_memory_mb`, "
              "`bootstrap.memory_mb`; tests/test_eval_memory.py pins that the peak at 4x the "
              "data stays below 2x).",
              "- The evaluate ratio to the bare score product is meaningful only where scoring "
              "dominates: at these sizes the bootstrap (1,000 resamples) and Python overhead "
              "dominate; see the val2014-size run below.",
              ""]
    if full is not None:
        cb = VAL_IMAGES * VAL_CAPTIONS * 4
        ratio = full["cpu"] / full["bare_product_cpu"]
        lines += [
            "## Evaluation at the lab's real size (val2014: 40,504 x 202,654)", "",
            "Random 512-d unit vectors, query blocks within `eval.score_memory_mb`'s default "
            f"({full['block_rows'][0]:,} images x all captions, {full['block_rows'][1]:,} "
            "captions x all images), "
            f"{args.threads} thread(s), CPU time. "
            + ("The whole `retrieval_metrics_and_ranks` (every R@K, ranks, MRR, mAP/NDCG)."
               if not full["blocks_timed"] else
               f"Timed on {full['blocks_timed']} query block(s) of each direction "
               "(`cliptune.retrieval.i2t_pass` over the first images against all captions, "
               "`t2i_pass` over the first captions against all images; the same for the bare "
               "product) and scaled by the block counts "
               f"({full['blocks_total'][0]} + {full['blocks_total'][1]}): every block costs the "
               "same. "
               "The peak memory is measured, and is the budget's whatever the block count."),
            "",
            "| method | time | peak RSS (GiB) | notes |",
            "|---|---|---|---|",
            f"| **cliptune blocked evaluation** | {_hms(full['cpu'])} | "
            f"{_gib(full['peak_rss'])} | inputs alone {_gib(full['inputs_rss'])} GiB |",
            f"| bare score product (both directions, the same blocks) | "
            f"{_hms(full['bare_product_cpu'])} | - | evaluation / product = {ratio:.2f}x "
            f"({'within' if ratio <= 2 else '**beyond**'} 2x) |",
            f"| CLIP_benchmark full-matrix method | not run | >= {cb / 1e9:.0f} GB (float32 "
            f"scores) + {VAL_IMAGES * VAL_CAPTIONS / 1e9:.0f} GB (bool positives) | does not "
            "fit this 24 GiB machine |",
            ""]
    write_result("scale.md", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
