"""What a finished training run leaves in its output folder: model.safetensors (the
best epoch), history.csv (one row per epoch), steps.csv (one row per optimiser step;
the columns: cliptune.training.train_log) and train_report.json."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from cliptune.config.load import short_hash
from cliptune.data.loading.pairs import PairData
from cliptune.files.atomic import atomic_path, write_json
from cliptune.runtime import device_name, hardware_info
from cliptune.training.checkpoint import TrainState
from cliptune.training.optim import describe_param_groups
from cliptune.training.train_log import HISTORY_COLUMNS, STEP_COLUMNS
from cliptune.training.validation import validation_images


def write_train_outputs(variant: dict, ts: TrainState, out_dir: Path, device: torch.device,
                        seconds: float, images: int, train_data: PairData,
                        val_data: PairData) -> None:
    """``seconds`` and ``images``: training time and images of this process (resumed
    epochs excluded), for the throughput in the report."""
    with atomic_path(out_dir / "model.safetensors", seal=True) as tmp:
        save_file(ts.best.state, str(tmp), metadata={"variant": variant["name"],
                                                      "config_hash": short_hash(variant)})
    hist = pd.DataFrame(ts.history, columns=HISTORY_COLUMNS)
    with atomic_path(out_dir / "history.csv") as tmp:
        hist.to_csv(tmp, index=False)
    with atomic_path(out_dir / "steps.csv") as tmp:
        pd.DataFrame(ts.step_log, columns=STEP_COLUMNS).to_csv(tmp, index=False)
    params = list(ts.model.parameters())
    write_json(out_dir / "train_report.json", {
        "variant": variant["name"], "config": variant, "device": device_name(device),
        "hardware": hardware_info(device),  # GPU name + peak memory, or CPU model + threads
        "torch": torch.__version__, "train_images": train_data.n_images,
        "train_captions": len(train_data.captions), "val_images": val_data.n_images,
        # What chose the saved epoch (train.monitor, early stopping): never the reported split.
        "selected_on": {"split": variant["select_split"],
                        "images": validation_images(val_data, variant["train"]),
                        "monitor": variant["train"]["monitor"]},
        "epochs_run": len(ts.history), "best_epoch": ts.best.epoch,
        "resumed_from": ts.resumed_from,  # train.resume_from: {epoch, checkpoint} or null
        "best_val_loss": None if math.isinf(ts.best.val_loss) else ts.best.val_loss,
        "wall_seconds": seconds, "images_per_s": images / seconds if seconds else None,
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "param_groups": describe_param_groups(ts.optimizer),  # name, parameters, lr, wd
    })
