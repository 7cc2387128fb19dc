"""Command-line entry of the train stage, one process per rank under torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node=2 \\
        -m cliptune.training.torchrun_entry --spec launch.json

The spec (written by cliptune.training.distributed.launch) holds the resolved variant,
the input paths of the train and validation splits, the output folder, the
resume-state path, the rule's log file and the folder of the per-step / per-epoch
logs (rank 0 writes them). Without torchrun's environment it
trains in one process, which is also how the preemption tests drive it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cliptune.training.checkpoint import PreemptedError

log = logging.getLogger("cliptune.training.torchrun_entry")


def _setup_logging(log_file: str | None, rank: int) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and rank == 0:
        # Append: the launching stage process already writes to this log.
        handlers.append(logging.FileHandler(log_file, mode="a"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s")


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", type=Path, required=True, help="launch.json of the train stage")
    args = ap.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    _setup_logging(spec["log"], int(os.environ.get("RANK", "0")))

    from cliptune.data.caches.features import load_split
    from cliptune.runtime import set_threads
    from cliptune.training.distributed import init_from_env, shutdown
    from cliptune.training.trainer import train_variant

    variant = spec["variant"]
    set_threads(spec["threads"])
    ctx = init_from_env(variant["train"]["device"])
    try:
        log.info("rank %d of %d on %s", ctx.rank, ctx.world_size, ctx.device)
        train_variant(variant, load_split(spec["inputs"], "train"),
                      load_split(spec["inputs"], "val"), Path(spec["out_dir"]),
                      Path(spec["state"]), show_progress=ctx.is_main, dist_ctx=ctx,
                      log_dir=Path(spec["log_dir"]) if spec["log_dir"] else None)
    except PreemptedError as exc:
        log.warning("%s", exc)
        return 3
    except Exception:
        log.exception("training failed on rank %d", ctx.rank)
        return 1
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
