"""Reading and writing volumes and small files. Imports nothing else of the package but errors."""

from pipeline.io.atomic import atomic_directory, atomic_output, write_json
from pipeline.io.volumes import (
    Volume,
    read_probabilities,
    read_probability,
    read_volume,
    write_probabilities,
    write_volume,
)

__all__ = [
    "Volume",
    "atomic_directory",
    "atomic_output",
    "read_probabilities",
    "read_probability",
    "read_volume",
    "write_json",
    "write_probabilities",
    "write_volume",
]
