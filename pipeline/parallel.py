"""Case-level parallelism shared by the stages: one case per worker process at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

import torch
from tqdm import tqdm

from pipeline.threads import cpu_budget


def map_cases(function: Callable, arguments: Iterable[tuple], workers: int, what: str) -> list:
    """``function(*args)`` for each tuple of ``arguments`` in ``workers`` processes, never more
    than the cores this process may use (threads.cpu_budget); results in order, with a progress
    bar on terminals. One worker runs in this process."""
    arguments = list(arguments)
    workers = min(workers, cpu_budget().cores)
    with tqdm(total=len(arguments), desc=what, unit="case", disable=None) as progress:
        if workers == 1:
            return [_tick(progress, function(*args)) for args in arguments]
        with ProcessPoolExecutor(workers, initializer=_one_thread_per_worker) as pool:
            futures = [pool.submit(function, *args) for args in arguments]
            return [_tick(progress, future.result()) for future in futures]


def _tick(progress: tqdm, result):
    progress.update()
    return result


def _one_thread_per_worker() -> None:
    # Workers share the cores; torch's own threads on top would oversubscribe them.
    torch.set_num_threads(1)
