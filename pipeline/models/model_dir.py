"""The model directory: everything inference needs, so a model travels as one folder.

model.json               network, plan (preprocessing + labels), patch size, training params
fold_<k>/weights.pt      the best checkpoint's network weights (tensors only)
fold_<k>/checkpoints/    Lightning's best.ckpt and last.ckpt, for resuming
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import pipeline
from pipeline.config import NetworkParams
from pipeline.errors import InputDataError
from pipeline.io import atomic_output, write_json
from pipeline.models.networks import build_network
from pipeline.preprocess.plans import Plans

MODEL_JSON = "model.json"


@dataclass(frozen=True)
class ModelDescription:
    network: NetworkParams
    plans: Plans
    patch_size: list[int]

    def build(self) -> nn.Module:
        return build_network(self.network, self.plans.n_channels, len(self.plans.labels))


def fold_dir(model_dir: Path, fold: int) -> Path:
    return Path(model_dir) / f"fold_{fold}"


def save_description(model_dir: Path, description: ModelDescription, **extra) -> None:
    write_json(
        Path(model_dir) / MODEL_JSON,
        {
            "resseg_version": pipeline.__version__,
            "network": description.network.model_dump(),
            "plans": description.plans.to_dict(),
            "patch_size": description.patch_size,
            **extra,
        },
    )


def save_weights(model_dir: Path, fold: int, network: nn.Module) -> None:
    with atomic_output(fold_dir(model_dir, fold) / "weights.pt") as tmp:
        torch.save(network.state_dict(), tmp)


def load_description(model_dir: Path) -> ModelDescription:
    path = Path(model_dir) / MODEL_JSON
    try:
        data = json.loads(path.read_text())
        return ModelDescription(
            network=NetworkParams.model_validate(data["network"]),
            plans=Plans.from_dict(data["plans"]),
            patch_size=list(data["patch_size"]),
        )
    except FileNotFoundError:
        raise InputDataError(f"{path}: not found; is {model_dir} a resseg model directory?") from None
    except (KeyError, TypeError, ValueError) as err:
        raise InputDataError(f"{path}: missing or malformed entry ({err})") from None


def load_fold_networks(model_dir: Path, description: ModelDescription) -> list[nn.Module]:
    """Every trained fold's network, in eval mode; weights load as tensors only (no pickled code)."""
    weight_files = sorted(Path(model_dir).glob("fold_*/weights.pt"))
    if not weight_files:
        raise InputDataError(f"{model_dir}: no fold_*/weights.pt; was training completed?")
    networks = []
    for path in weight_files:
        network = description.build()
        try:
            network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:
            raise InputDataError(f"{path}: cannot load weights ({err.__class__.__name__}: {err})") from None
        networks.append(network.eval())
    return networks
