"""Real Lightning training steps per preset: patches/s, and the share of each step spent waiting
for the data loader (patch sampling and augmentation).

    python benchmarks/training.py [--quick] [--presets resunet_small resenc_s] [--steps 30]
                                  [--workers 0 2] [--rows PATH]

The cohort is resseg's synthetic CT (the demo's, 12 training cases), preprocessed once into
--work. Each (preset, workers) pair trains --steps optimiser steps of the demo's plan with the
full nnU-Net augmentation, through the same DataModule and LightningModule as `resseg train`.
Waiting for data is the time between the end of one step and the start of the next; the rest
is the step itself (forward, backward, optimiser). The first steps (warm-up, worker start) are
not counted. patches/s is the batch size times the counted steps over their waiting and step
time. --quick: resunet_small only, 10 steps. --rows writes each pair's patches/s, its range
over the counted steps and the share waiting for data, for benchmarks/suite.py
(benchmarks/rows.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from preprocess_vs_nnunet import fill_defaults
from rows import Row, write_rows

from pipeline import split
from pipeline.cohort import synthetic
from pipeline.config import PreprocessParams, SplitParams, SynthParams, TrainParams, resolve_network
from pipeline.models.data import PreprocessedDataModule
from pipeline.models.model_dir import ModelDescription
from pipeline.models.module import SegmentationModule
from pipeline.preprocess import stage as preprocess_stage
from pipeline.preprocess.plans import Plans

WARMUP_STEPS = 3


class StepTimer(L.Callback):
    def __init__(self):
        self.waits, self.steps = [], []
        self._batch_end = self._batch_start = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._batch_start = time.perf_counter()
        if self._batch_end is not None and trainer.global_step >= WARMUP_STEPS:
            self.waits.append(self._batch_start - self._batch_end)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self._batch_end = time.perf_counter()
        if trainer.global_step > WARMUP_STEPS:
            self.steps.append(self._batch_end - self._batch_start)


def main() -> None:
    args = parse_args()
    preprocessed = prepare(args.work)
    plans = Plans.load(preprocessed / "plans.json")
    fold = json.loads((args.work / "splits.json").read_text())[0]
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    print(
        f"\nplan: patch {plans.patch_size}, batch {plans.batch_size}; {accelerator}; {args.steps} steps each"
    )
    print("| preset | loader workers | patches/s | step (ms, median) | waiting for data |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for preset in args.presets:
        for workers in args.workers:
            timer = train(preset, workers, args.steps, plans, preprocessed, fold)
            per_step = statistics.median(timer.steps)
            waiting = sum(timer.waits) / (sum(timer.waits) + sum(timer.steps))
            patches_per_s = plans.batch_size * len(timer.steps) / (sum(timer.waits) + sum(timer.steps))
            print(f"| {preset} | {workers} | {patches_per_s:.2f} | {per_step * 1000:.0f} | {waiting:.0%} |")
            # Not the median step's rate: with loader workers, batches arrive unevenly (one step
            # waits, the next finds its batch ready), and only the rate over all steps counts both.
            step_rates = [plans.batch_size / (w + s) for w, s in zip(timer.waits, timer.steps, strict=True)]
            rows.append(
                Row(
                    "training",
                    f"patches / s, {preset}, {workers} workers",
                    patches_per_s,
                    (min(step_rates), max(step_rates)),
                    len(timer.steps),
                    higher_is_better=True,
                    device="cuda" if accelerator == "gpu" else "cpu",
                    note=f"{waiting:.0%} waiting for data; Lightning, patch "
                    f"{'x'.join(map(str, plans.patch_size))}, batch {plans.batch_size}",
                )
            )
    if args.rows:
        write_rows(args.rows, rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", help="default resunet_small resenc_s resnet18_unet (--quick: resunet_small)"
    )
    parser.add_argument("--steps", type=int, help="counted steps per run; default 30 (--quick: 10)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--quick", action="store_true", help="one small preset, few steps")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "resseg-bench-train")
    parser.add_argument("--rows", type=Path, help="also write the suite's rows here (benchmarks/rows.py)")
    args = parser.parse_args()
    return fill_defaults(
        args,
        quick={"presets": ["resunet_small"], "steps": 10},
        full={"presets": ["resunet_small", "resenc_s", "resnet18_unet"], "steps": 30},
    )


def prepare(work: Path) -> Path:
    """The demo's synthetic cohort at half its size, preprocessed once."""
    preprocessed = work / "preprocessed"
    if not (preprocessed / "plans.json").exists():
        synthetic.run(SynthParams(n_train=12, n_test=1), work / "cohort")
        preprocess_stage.run(PreprocessParams(), work / "cohort", preprocessed)
        split.run(SplitParams(n_folds=3), preprocessed / "plans.json", work / "splits.json")
    return preprocessed


def train(preset: str, workers: int, steps: int, plans: Plans, preprocessed: Path, fold: dict) -> StepTimer:
    params = TrainParams(
        model=preset, iterations_per_epoch=steps + WARMUP_STEPS, max_epochs=1, num_workers=workers
    )
    description = ModelDescription(resolve_network(params), plans, plans.patch_size)
    module = SegmentationModule(description.build(), plans.foreground_labels, plans.patch_size, params)
    data = PreprocessedDataModule(
        preprocessed,
        fold,
        plans.patch_size,
        list(plans.target_spacing),
        len(plans.labels),
        plans.batch_size,
        params,
    )
    timer = StepTimer()
    trainer = L.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        precision="16-mixed" if torch.cuda.is_available() else "32-true",
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=data)
    return timer


if __name__ == "__main__":
    main()
