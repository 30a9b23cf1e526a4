"""Data: the vectorised pipeline, batch transforms, and readers of real data sets.

``tl.data.ArrayDataset`` is the pipeline; ``tl.transforms`` and ``tl.datasets`` are
:mod:`trainingloop.data.transforms` and :mod:`trainingloop.data.datasets`. The readers build on
:mod:`~trainingloop.data.download` (root folder, checksums, fetching),
:mod:`~trainingloop.data.formats` (file parsers) and :mod:`~trainingloop.data.tokenizer`.
"""

from trainingloop.data import transforms
from trainingloop.data.pipeline import ArrayDataset

__all__ = ["ArrayDataset", "transforms"]
