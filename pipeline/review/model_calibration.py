"""A model's calibration as ``resseg predict`` and ``resseg evaluate`` read it: the temperature
and the uncertainty limit that the calibrate stage (calibrate.py) fitted and wrote beside the
fold directories, as ``<model>/calibration.json``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputDataError

CALIBRATION_JSON = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    temperature: float
    uncertainty_limit: float | None  # None: no out-of-fold case had any foreground
    lesion_thresholds: dict[str, float]  # lesion label -> operating threshold chosen out of fold

    @classmethod
    def load(cls, model_dir: Path) -> Calibration | None:
        """The model directory's calibration; None when it has none (a fold directory, a model
        trained outside the pipeline)."""
        path = Path(model_dir) / CALIBRATION_JSON
        return cls.read(path) if path.is_file() else None

    @classmethod
    def read(cls, path: Path) -> Calibration:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            temperature, limit = float(data["temperature"]), data["uncertainty"]["limit"]
            limit = None if limit is None else float(limit)
            thresholds = {
                str(name): float(point["threshold"])
                for name, point in data.get("lesion_thresholds", {}).items()
                if point["threshold"] is not None
            }
        except OSError as err:
            raise InputDataError(f"{path}: cannot be read ({err.strerror})") from None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise InputDataError(f"{path}: not a calibration written by resseg calibrate") from None
        if not (math.isfinite(temperature) and temperature > 0):
            raise InputDataError(f"{path}: temperature is {temperature}, expected a positive number")
        return cls(temperature, limit, thresholds)
