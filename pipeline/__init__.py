"""resseg: a DVC-tracked pipeline for 3D residual segmentation of CT/MRI cohorts."""

__version__ = "0.1.0"
