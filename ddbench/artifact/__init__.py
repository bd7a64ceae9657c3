"""Distilled-set artifacts: save/load (safetensors + JSON), importers of other layouts, and exporters."""

from ddbench.artifact.exporters import export_imagefolder, export_npz, export_png_grid, to_pixels
from ddbench.artifact.store import Artifact, load_artifact, save_artifact

__all__ = [
    "Artifact", "export_imagefolder", "export_npz", "export_png_grid", "load_artifact", "save_artifact", "to_pixels",
]
