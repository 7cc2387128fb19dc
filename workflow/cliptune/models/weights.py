"""Pretrained weights fetched once, on the submit host, into ``resources/weights/``.

Compute nodes are often offline. The ``weights`` rule (a local rule) downloads
every hub checkpoint and torchvision weight file the configured variants need,
verifies each file against what the hub / the file name promises, and writes
one small marker per checkpoint. Every model-loading job then runs with
``HF_HUB_CACHE`` / ``TORCH_HOME`` pointing there and ``HF_HUB_OFFLINE=1``
(``use_local_weights``), so it never reaches for the network.

No torch / huggingface_hub import at module level: the Snakefile imports this.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from cliptune.files.atomic import write_json
from cliptune.files.hashing import file_sha256
from cliptune.models.clip_bpe import CLIP_BPE

log = logging.getLogger(__name__)

WEIGHTS_DIR = "resources/weights"
# Not imported from cliptune.models.text_encoder, which imports torch: this module is
# read while the Snakefile is parsed (test_weights checks the two agree).
OFFLINE_ALIAS = "offline-minilm"
# Model settings that name something installed with a package, never a hub repo:
# the packaged MiniLM and CLIP's BPE tokenizer.
PACKAGED = frozenset({OFFLINE_ALIAS, CLIP_BPE})
# Weight formats a hub repo may carry besides the one transformers loads.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".ot", ".pt", ".pth",
                    ".ckpt", ".tflite", ".gguf")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# torch.hub's convention: weight files are named <name>-<sha256 prefix>.pth.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")


class WeightsError(RuntimeError):
    """A checkpoint could not be fetched or failed verification."""


def hub_repo(name: str | None) -> str | None:
    """The hub id behind a model setting, or None for the packaged alias / a local dir."""
    if not name or name in PACKAGED or name.startswith((".", "/", "~")):
        return None
    if Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return None
    return name


def needed_weights(variant: Mapping) -> list[dict]:
    """Every download one resolved variant loads: hub repos and torchvision files."""
    model = variant["model"]
    repos = [variant["text_encoder"]["model"]]
    if model["kind"] == "clip":
        repos.append(model["clip"]["model"])
    elif model["kind"] == "dual_encoder":
        repos.append(model["dual_encoder"]["tokenizer"] or variant["text_encoder"]["model"])
    specs = [{"source": "hf", "repo": r, "revision": "main"}
             for r in dict.fromkeys(filter(None, map(hub_repo, repos)))]
    if (model["kind"] == "resnet" and model["weights"]
            and model["backbone"] != "efficientnet_lite0"):  # that one ships in a package
        specs.append({"source": "torchvision", "backbone": model["backbone"],
                      "weights": model["weights"]})
    return specs


def weight_key(spec: Mapping) -> str:
    """A file-name-safe key per checkpoint: the marker's path below WEIGHTS_DIR."""
    if spec["source"] == "hf":
        return f"hf/{spec['repo'].replace('/', '--')}@{spec['revision']}"
    return f"torchvision/{spec['backbone']}.{spec['weights']}"


def marker_path(spec: Mapping, root: str = WEIGHTS_DIR) -> str:
    return f"{root}/{weight_key(spec)}.json"


def encoder_markers(model: str, root: str = WEIGHTS_DIR) -> list[str]:
    """Markers the text cache of one encoder waits for: its hub repo's, if any."""
    repo = hub_repo(model)
    return [marker_path({"source": "hf", "repo": repo, "revision": "main"}, root)] if repo else []


def use_local_weights(root: str | Path = WEIGHTS_DIR,
                      env: MutableMapping[str, str] | None = None) -> None:
    """Point HF and torch at the fetched weights and forbid hub access. Call before
    transformers / huggingface_hub are imported (they read these at import)."""
    env = os.environ if env is None else env
    root = Path(root).resolve()
    env["HF_HUB_CACHE"] = str(root / "hf")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["TORCH_HOME"] = str(root / "torch")
    # In every model-loading job's log: where a cluster user checks that nothing was fetched.
    log.info("pretrained weights load from %s only (HF_HUB_OFFLINE=1)", root)


def _git_blob_sha1(path: Path) -> str:
    # What the hub reports as blob_id for a file stored in git (not LFS).
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's id


def hub_files(names: list[str]) -> list[str]:
    """Top-level config/tokenizer files plus ONE weight format (safetensors, else .bin):
    the hub repo of openai/clip-vit-base-patch32 carries four copies of its weights."""
    top = [n for n in names if "/" not in n and not n.startswith(".")]
    weights = [n for n in top if n.endswith(".safetensors")] or [
        n for n in top if n.endswith(".bin")]
    return sorted({n for n in top if not n.endswith(_WEIGHT_SUFFIXES)} | set(weights))


def _hub_hint(repo: str, exc: Exception) -> str:
    return (f"cannot fetch {repo!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "The weights rule runs on the submit host and needs the hub: run it where there "
            "is internet (HF_ENDPOINT for a mirror, HF_TOKEN for gated repos, HF_HUB_OFFLINE "
            "unset), or fill the cache by hand: hf download "
            f"{repo} --cache-dir {WEIGHTS_DIR}/hf")


def fetch_hub_snapshot(repo: str, revision: str, cache_dir: Path) -> dict:
    """Download the files transformers needs from one hub repo into an HF cache folder
    and check each against the hub's size and hash (LFS sha256 or git blob id)."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
        siblings = {s.rfilename: s for s in info.siblings or []}
        files = hub_files(list(siblings))
        if not files:
            raise WeightsError(f"{repo}@{revision} lists no config or weight files")
        for name in files:  # pinned to the commit just resolved: one consistent snapshot
            path = hf_hub_download(repo, name, revision=info.sha, cache_dir=str(cache_dir))
            log.info("%s: %s (%d bytes)", repo, name, siblings[name].size or 0)
        folder = Path(path).parent
    except WeightsError:
        raise
    except Exception as exc:  # network, auth, offline mode: all need the same fix
        raise WeightsError(_hub_hint(repo, exc)) from exc
    if revision != info.sha:  # offline loads resolve refs/<revision>, e.g. refs/main
        ref = cache_dir / f"models--{repo.replace('/', '--')}" / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(info.sha)
    checked = {}
    for name in files:
        checked[name] = _verify_hub_file(folder / name, siblings[name], repo)
    log.info("%s@%s: %d files verified in %s", repo, info.sha[:12], len(checked), folder)
    return {"repo": repo, "revision": revision, "commit": info.sha, "files": checked}


def _verify_hub_file(path: Path, sibling, repo: str) -> dict:
    if not path.is_file():
        raise WeightsError(f"{repo}: {path.name} missing after download")
    size = path.stat().st_size
    if sibling.size is not None and size != sibling.size:
        raise WeightsError(f"{repo}: {path.name} has {size} bytes, the hub says "
                           f"{sibling.size}; delete {path} and rerun")
    if sibling.lfs is not None:
        got, want = file_sha256(path), sibling.lfs.sha256
    else:
        got, want = _git_blob_sha1(path), sibling.blob_id
    if want and got != want:
        raise WeightsError(f"{repo}: {path.name} hash {got} != hub {want}; delete {path} "
                           "and rerun")
    return {"size": size, "hash": got}


def fetch_torchvision_file(url: str, torch_home: Path) -> dict:
    """Download one torchvision weight file where torch.hub looks for it offline
    ($TORCH_HOME/hub/checkpoints/) and check the sha256 prefix in its name."""
    from torch.hub import download_url_to_file

    name = url.rsplit("/", 1)[-1]
    dest = torch_home / "hub" / "checkpoints" / name
    prefix = m.group(1) if (m := _HASH_IN_NAME.search(name)) else None
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_url_to_file(url, str(dest), hash_prefix=prefix, progress=True)
        except Exception as exc:
            raise WeightsError(f"cannot download {url} ({type(exc).__name__}: {exc}); run the "
                               "weights rule where there is internet, or place the file at "
                               f"{dest}") from exc
    digest = file_sha256(dest)
    if prefix and not digest.startswith(prefix):
        raise WeightsError(f"{dest} has sha256 {digest}, its name promises {prefix}...; "
                           "delete it and rerun")
    return {"url": url, "file": str(dest), "sha256": digest}


def fetch_weights(spec: Mapping, marker: Path, root: str | Path = WEIGHTS_DIR) -> dict:
    """Fetch and verify one checkpoint, then write its marker (the rule's output)."""
    root = Path(root)
    if spec["source"] == "hf":
        record = fetch_hub_snapshot(spec["repo"], spec["revision"], root / "hf")
    else:
        import torchvision

        enum = torchvision.models.get_model_weights(spec["backbone"])
        weights = enum.DEFAULT if spec["weights"] == "DEFAULT" else enum[spec["weights"]]
        record = fetch_torchvision_file(weights.url, root / "torch")
    record = {"spec": dict(spec), **record}
    write_json(marker, record)
    return record
