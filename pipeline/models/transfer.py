"""Start a training run from another model's weights (``train.init_from``).

Tensors load by name and shape; everything else keeps its fresh initialisation. When the
source model segments other labels, its segmentation head is not loaded even where the
shapes happen to agree: a head that predicts "kidney" must not start out as "liver".
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.model_dir import MODEL_JSON, WEIGHTS, fold_dirs, load_state_dict


def initialise_from(network: nn.Module, source: str | Path, labels: dict[int, str]) -> dict:
    """Copy matching tensors of ``source`` into ``network``; return what was and was not loaded."""
    weights_path, source_labels = _resolve(Path(source))
    source_state = load_state_dict(weights_path)
    same_labels = source_labels is None or source_labels == {str(v): n for v, n in labels.items()}
    head = set() if same_labels else _head_parameter_names(network, len(labels))

    target_state = network.state_dict()
    loaded, skipped = [], {}
    for name, tensor in target_state.items():
        if name not in source_state:
            skipped[name] = "not in the source"
        elif name in head:
            skipped[name] = "segmentation head re-initialised: the labels differ"
        elif source_state[name].shape != tensor.shape:
            skipped[name] = f"shape {list(source_state[name].shape)} in the source, {list(tensor.shape)} here"
        else:
            target_state[name] = source_state[name]
            loaded.append(name)
    if not loaded:
        raise ConfigError(f"train.init_from: no tensor of {weights_path} fits this network")
    network.load_state_dict(target_state)
    return {
        "source": str(weights_path),
        "loaded": loaded,
        "not_loaded": skipped,
        "unused_in_source": sorted(set(source_state) - set(target_state)),
    }


def _resolve(source: Path) -> tuple[Path, dict | None]:
    """The weights file behind ``source``, and the label names it was trained for when known."""
    if source.is_dir():
        fold = fold_dirs(source)[0]
        labels = json.loads((fold / MODEL_JSON).read_text())["plans"]["labels"]
        return fold / WEIGHTS, labels
    if source.is_file():
        return source, None
    raise ConfigError(f"train.init_from: {source} does not exist")


def _head_parameter_names(network: nn.Module, n_classes: int) -> set[str]:
    """Parameters of the layers that produce class logits: every convolution with one output
    channel per class (the final layer, and the deep-supervision heads where there are some)."""
    names = set()
    for module_name, module in network.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd) and module.out_channels == n_classes:
            names |= {f"{module_name}.{name}" for name, _ in module.named_parameters()}
    return names
