"""Public datasets in their publishers' own layouts, read into acula manifests: one module per layout behind one
registry (`LAYOUTS`). `python -m acula_train.layouts NAME ROOT` (or `acula-prepare-dataset`) writes the manifest."""

from . import circor  # noqa: F401  (registers the layout)
from .registry import LAYOUTS, DatasetLayout, get_layout, load_layout, register_layout

__all__ = ["LAYOUTS", "DatasetLayout", "get_layout", "load_layout", "register_layout"]
