"""Per-stage strides and kernel sizes of a U-Net, derived from the plan's patch and spacing.

nnU-Net's rule (``get_pool_and_conv_props``), so a network sees millimetres rather than voxels:

- an axis is downsampled only while its spacing is at most twice the finest current spacing,
  so a thick-slice axis keeps its resolution until the in-plane axes have caught up with it;
- an axis is downsampled only while its size is even and halving it leaves at least
  ``MIN_FEATURE_SIZE`` voxels, so every stage's shape is exact and the decoder needs no padding;
- a stage convolves with kernel 1 on an axis whose spacing is still more than twice the finest
  (thick slices get in-plane convolutions only, until they stop being thick), else with 3; an
  axis that got 3 keeps it in the deeper stages.

Stage 0 keeps the input's resolution (stride 1). Stages stop when no axis can be downsampled
or at ``max_stages``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIN_FEATURE_SIZE = 4
# An axis is "thick" (no downsampling, kernel 1) when its spacing exceeds this many times the finest.
ANISOTROPY = 2.0


@dataclass(frozen=True)
class Topology:
    # strides[s] is the first convolution's stride in stage s (stage 0: all 1); kernel_sizes[s]
    # is the kernel of stage s's convolutions.
    strides: list[tuple[int, ...]]
    kernel_sizes: list[tuple[int, ...]]

    @property
    def n_stages(self) -> int:
        return len(self.strides)


def plan_topology(patch_size: Sequence[int], spacing: Sequence[float], max_stages: int) -> Topology:
    if len(patch_size) != len(spacing):
        raise ValueError(f"patch {list(patch_size)} and spacing {list(spacing)} differ in dimensions")
    size, current = list(patch_size), [float(s) for s in spacing]
    strides = [(1,) * len(size)]
    kernel_sizes = [_kernel(current, previous=(1,) * len(size))]
    while len(strides) < max_stages:
        finest = min(current)
        stride = tuple(2 if _halvable(n, s, finest) else 1 for n, s in zip(size, current, strict=True))
        if all(s == 1 for s in stride):
            break
        size = [n // s for n, s in zip(size, stride, strict=True)]
        current = [c * s for c, s in zip(current, stride, strict=True)]
        strides.append(stride)
        kernel_sizes.append(_kernel(current, previous=kernel_sizes[-1]))
    return Topology(strides, kernel_sizes)


def _halvable(size: int, spacing: float, finest: float) -> bool:
    return spacing <= ANISOTROPY * finest and size % 2 == 0 and size // 2 >= MIN_FEATURE_SIZE


def _kernel(spacing: list[float], previous: tuple[int, ...]) -> tuple[int, ...]:
    finest = min(spacing)
    return tuple(
        3 if k == 3 or s <= ANISOTROPY * finest else 1 for s, k in zip(spacing, previous, strict=True)
    )
