"""Other work on the machine, for the benchmarks' --load K: K processes that each keep a core busy
for as long as a measurement runs, as another job on a shared server would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """``count`` Python processes spinning in a loop (one core each, no memory to speak of),
    stopped when the block ends, whatever ends it."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
