"""Real Lightning training steps per preset: patches/s, and the share of each step spent waiting
for the data loader (patch sampling and augmentation).

    python benchmarks/training.py [--quick] [--presets resunet_small resenc_s] [--steps 30]
                                  [--workers 0 2] [--load K] [--rows PATH]

The cohort is resseg's synthetic CT (the demo's, 12 training cases), preprocessed once into
--work. Each (preset, workers) pair trains --steps optimiser steps of the demo's plan with the
full nnU-Net augmentation, through the same DataModule and LightningModule as `resseg train`,
with the threads `resseg train` would take (pipeline/threads.py: the cores this process may use,
less one per loader worker; OpenMP's waiting threads asleep). Waiting for data is the time
between the end of one step and the start of the next; the rest is the step itself (forward,
backward, optimiser). The first steps (warm-up, worker start) are not counted. patches/s is the
batch size times the counted steps over their waiting and step time. --quick: resunet_small
only, 10 steps. With --load K, each pair is measured again while K processes of the script's own
keep a core busy each (benchmarks/load.py), and set against its idle figure. --rows writes each
pair's patches/s, its range over the counted steps and the share waiting for data, for
benchmarks/suite.py (benchmarks/rows.py).

torch and Lightning are imported only once the thread settings are made: OpenMP reads its wait
policy when torch first loads it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from load import busy_cores
from preprocess_vs_nnunet import fill_defaults
from rows import Row, write_rows

from pipeline.threads import cpu_budget, limit_threads, threads_per_process

WARMUP_STEPS = 3


def step_timer():
    """A Lightning callback timing each counted step and the wait for its batch."""
    import lightning as L

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

    return StepTimer()


def main() -> None:
    args = parse_args()
    budget = cpu_budget().cores
    limit_threads(budget)  # before torch loads OpenMP
    import torch

    from pipeline.preprocess.plans import Plans

    preprocessed = prepare(args.work)
    plans = Plans.load(preprocessed / "plans.json")
    fold = json.loads((args.work / "splits.json").read_text())[0]
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    print(
        f"\nplan: patch {plans.patch_size}, batch {plans.batch_size}; {accelerator}; {args.steps} steps each"
    )
    loads = [0, args.load] if args.load else [0]
    print("| preset | loader workers | cores kept busy | patches/s | step (ms, median) | waiting for data |")
    print("|---|---:|---:|---:|---:|---:|")
    rows, rates = [], {}
    for preset in args.presets:
        for workers in args.workers:
            for load in loads:
                limit_threads(threads_per_process(budget, workers=workers))  # as `resseg train` does
                with busy_cores(load):
                    timer = train(preset, workers, args.steps, plans, preprocessed, fold)
                per_step = statistics.median(timer.steps)
                waiting = sum(timer.waits) / (sum(timer.waits) + sum(timer.steps))
                patches_per_s = plans.batch_size * len(timer.steps) / (sum(timer.waits) + sum(timer.steps))
                print(
                    f"| {preset} | {workers} | {load} | {patches_per_s:.2f} | {per_step * 1000:.0f} "
                    f"| {waiting:.0%} |"
                )
                # Not the median step's rate: with loader workers, batches arrive unevenly (one step
                # waits, the next finds its batch ready), and only the rate over all steps counts both.
                step_rates = [
                    plans.batch_size / (w + s) for w, s in zip(timer.waits, timer.steps, strict=True)
                ]
                rates[preset, workers, load] = (patches_per_s, step_rates)
                busy = f", {load} of {budget} cores busy" if load else ""
                idle = rates[preset, workers, 0]
                rows.append(
                    Row(
                        "training",
                        f"patches / s, {preset}, {workers} workers{busy}",
                        patches_per_s,
                        (min(step_rates), max(step_rates)),
                        len(timer.steps),
                        reference=idle[0] if load else None,
                        reference_range=(min(idle[1]), max(idle[1])) if load else None,
                        against="the same, idle" if load else None,
                        higher_is_better=True,
                        device="cuda" if accelerator == "gpu" else "cpu",
                        note=f"{waiting:.0%} waiting for data; Lightning, patch "
                        f"{'x'.join(map(str, plans.patch_size))}, batch {plans.batch_size}"
                        + ("; goal: at least 1/2.2 of idle" if load else ""),
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
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        help="also measure each pair while this many processes keep a core busy each",
    )
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
    from pipeline import split
    from pipeline.cohort import synthetic
    from pipeline.config import PreprocessParams, SplitParams, SynthParams
    from pipeline.preprocess import stage as preprocess_stage

    preprocessed = work / "preprocessed"
    if not (preprocessed / "plans.json").exists():
        synthetic.run(SynthParams(n_train=12, n_test=1), work / "cohort")
        preprocess_stage.run(PreprocessParams(), work / "cohort", preprocessed)
        split.run(SplitParams(n_folds=3), preprocessed / "plans.json", work / "splits.json")
    return preprocessed


def train(preset: str, workers: int, steps: int, plans, preprocessed: Path, fold: dict):
    import lightning as L
    import torch

    from pipeline.config import TrainParams, resolve_network
    from pipeline.models.data import PreprocessedDataModule
    from pipeline.models.model_dir import ModelDescription
    from pipeline.models.module import SegmentationModule

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
    timer = step_timer()
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
