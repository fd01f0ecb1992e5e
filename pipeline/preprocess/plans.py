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
class ChannelNormalization:
    """``ct``: clip to the cohort's foreground percentiles, then z-score with its statistics.
    ``zscore``: per case, z-score over the case's non-zero voxels (MRI and other modalities)."""

    scheme: str
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class Plans:
    channel_names: list[str]
    labels: dict[int, str]  # value -> name, background included
    target_spacing: tuple[float, float, float]
    normalization: list[ChannelNormalization]  # one per channel
    patch_size: list[int]
    batch_size: int

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def foreground_labels(self) -> dict[int, str]:
        return {value: name for value, name in self.labels.items() if value != 0}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["labels"] = {str(value): name for value, name in self.labels.items()}
        out["axcodes"] = AXCODES
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Plans:
        return cls(
            channel_names=list(data["channel_names"]),
            labels={int(value): name for value, name in data["labels"].items()},
            target_spacing=tuple(data["target_spacing"]),
            normalization=[ChannelNormalization(**n) for n in data["normalization"]],
            patch_size=list(data["patch_size"]),
            batch_size=int(data["batch_size"]),
        )

    def save(self, path: Path, **extra) -> None:
        write_json(path, {**self.to_dict(), **extra})

    @classmethod
    def load(cls, path: Path) -> Plans:
        return cls.from_dict(json.loads(Path(path).read_text()))
