"""The preprocessing plan: everything needed to turn a raw scan into network input and back.

It is written to ``plans.json`` by the preprocess stage and copied into every model directory,
so that inference at another site rebuilds exactly the chain that training saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.io import write_json

# Orientation every case is brought to before resampling, so that patches, flips and the
# network see anatomy the same way round whatever the scanner wrote.
AXCODES = "RAS"


@dataclass(frozen=True)
class IntensityNormalization:
    """CT: clip to the cohort's foreground percentiles, then z-score with its statistics."""

    clip_low: float
    clip_high: float
    mean: float
    std: float


@dataclass(frozen=True)
class Plans:
    modality: str
    labels: dict[int, str]  # value -> name, background included
    target_spacing: tuple[float, float, float]
    intensity: IntensityNormalization

    def to_dict(self) -> dict:
        out = asdict(self)
        out["labels"] = {str(value): name for value, name in self.labels.items()}
        out["axcodes"] = AXCODES
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Plans:
        return cls(
            modality=data["modality"],
            labels={int(value): name for value, name in data["labels"].items()},
            target_spacing=tuple(data["target_spacing"]),
            intensity=IntensityNormalization(**data["intensity"]),
        )

    def save(self, path: Path, **extra) -> None:
        write_json(path, {**self.to_dict(), **extra})

    @classmethod
    def load(cls, path: Path) -> Plans:
        return cls.from_dict(json.loads(Path(path).read_text()))
