"""Data: the vectorised pipeline, token windows, batch transforms, and readers of real data sets.

``tl.data.ArrayDataset`` is the pipeline (memory-mapped NumPy columns included);
``tl.data.TokenDataset`` (and its ``random`` stream, a :class:`RandomWindows`) reads next-token
windows from a token array or nanoGPT's ``.bin`` file; ``tl.data.Prefetcher`` copies host
batches to a GPU one batch ahead on a side stream; ``tl.transforms`` and ``tl.datasets``
are :mod:`trainingloop.data.transforms` and :mod:`trainingloop.data.datasets`. The readers build on
:mod:`~trainingloop.data.download` (root folder, checksums, fetching),
:mod:`~trainingloop.data.formats` (file parsers) and :mod:`~trainingloop.data.tokenizer`.
"""

from trainingloop.data import transforms
from trainingloop.data.pipeline import ArrayDataset
from trainingloop.data.prefetch import Prefetcher
from trainingloop.data.tokens import RandomWindows, TokenDataset

__all__ = ["ArrayDataset", "Prefetcher", "RandomWindows", "TokenDataset", "transforms"]
