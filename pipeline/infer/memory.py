"""Whether a scan's prediction fits in memory, asked before it starts: a volume too large is
refused with the size it would need, rather than the whole batch being killed by the OS."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pipeline.errors import ConfigError
from pipeline.io.limits import GIB, available_memory
from pipeline.models.model_dir import ModelDescription

__all__ = ["GIB", "available_memory", "check_device_memory", "prediction_bytes", "window_bytes"]

FLOAT32 = 4
# The network's tensors are tracked, not the convolutions' scratch buffers nor the sliding
# window's own copies of a window: on the CPU one forward pass peaked at up to 1.9x the tracked
# bytes (resunet_small, resenc_m and resnet18_unet presets, 64^3 to 128^3 windows), a whole
# prediction of a one-window scan at 2.1x (tests/infer/test_memory.py measures it again).
WORKSPACE_FACTOR = 3
# The allocator's share on top of the arrays counted: a measured peak exceeded their sum by up to
# 1.5%, in about 1 run in 10 (tests/infer/test_memory.py, 2026-12-01).
ALLOCATOR_SLACK = 1.1


def prediction_bytes(
    shape: Sequence[int],
    spacing: Sequence[float],
    target_spacing: Sequence[float],
    n_channels: int,
    n_classes: int,
) -> int:
    """An upper estimate of the host memory that predicting one scan takes, counted in float32
    (the crop to the body only makes it smaller). On the resampled grid: the image twice (a
    transform and its result) and the class scores three times (the blending accumulator, the
    softmax, the folds' sum) besides the blending weights. On the scan's own grid: the image as
    read and as float32, the log-odds resampled back, the class scores made of them (a softmax
    in place: one channel more for its maxima and sums), and the argmax's int64 indices. tests/infer/test_memory.py checks it against a measured peak."""
    scan_voxels = int(np.prod(shape, dtype=np.int64))
    resampled_voxels = int(np.prod(np.asarray(shape) * np.asarray(spacing) / np.asarray(target_spacing)))
    on_resampled_grid = resampled_voxels * (2 * n_channels + 3 * n_classes + 1)
    on_scan_grid = scan_voxels * (2 * n_channels + 2 * n_classes + 2)
    return int(ALLOCATOR_SLACK * FLOAT32 * (on_resampled_grid + on_scan_grid))


def window_bytes(description: ModelDescription, sw_batch_size: int = 1) -> int:
    """The memory the network's activations take at their peak over one forward pass of
    ``sw_batch_size`` windows in float32, computed from the architecture: the network is built
    and run on PyTorch's meta device, where tensors have sizes but no storage, and the bytes of
    the tensors alive at each step are summed."""
    with torch.device("meta"):
        network = description.build().eval()
        windows = torch.zeros(sw_batch_size, description.plans.n_channels, *description.patch_size)
    with torch.no_grad(), _LiveTensorBytes() as live:
        network(windows)
    return WORKSPACE_FACTOR * live.peak


def check_device_memory(activations: int, free: int, device: torch.device) -> None:
    """Refuse a GPU whose free memory cannot hold one forward pass, before any scan is read (the
    estimate counts float32; mixed precision needs about half)."""
    if activations > free:
        raise ConfigError(
            f"--device {device}: one sliding window of this model needs about {activations / GIB:.1f} GiB "
            f"of activations, the device has {free / GIB:.1f} GiB free (lower predict.sw_batch_size, "
            "or --device cpu)"
        )


class _LiveTensorBytes(TorchDispatchMode):
    """The most bytes held at once by the tensors the operations under it create: each storage
    is counted from the operation that makes it until it is freed."""

    def __init__(self):
        super().__init__()
        self.held: dict[int, int] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(result):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage._cdata not in self.held:  # a view or an in-place result adds nothing
                    self.held[storage._cdata] = storage.nbytes()
                    weakref.finalize(storage, self.held.pop, storage._cdata)
        self.peak = max(self.peak, sum(self.held.values()))
        return result
