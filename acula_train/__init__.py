"""The acula training app: manifests and decoding, clinical reports, the frozen text teacher and its caches, the
leakage guard, the alignment loop, checkpoints and the output folder with its model card (used by `train_acula.py`).

The model itself lives in the `modeling_acula` library, which this package builds on and never the other way round.
"""

from .teacher import AculaTeacher

__all__ = ["AculaTeacher"]
