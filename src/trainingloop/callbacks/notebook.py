"""Jupyter support for the display callbacks: finding a kernel, and one output updated in place.

Used by :class:`~trainingloop.callbacks.progress.ProgressPrinter` (a live bar per phase) and
:class:`~trainingloop.callbacks.progress_plot.ProgressPlot` (the curves). An
:class:`InPlaceOutput` is one ``display(..., display_id=True)`` whose later contents replace it
with ``update`` (an ``update_display_data`` message), so a notebook gets one output per bar or
figure instead of a line per refresh, and nothing else in the cell is cleared. IPython is
imported only inside a kernel, where it is loaded already.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["InPlaceOutput", "in_notebook"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython shell with a kernel), not in terminal IPython."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it; nothing else to import
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


class InPlaceOutput:
    """One notebook output: the first :meth:`show` displays, each later one replaces it."""

    def __init__(self) -> None:
        self._handle: Any = None

    def show(self, content: Any, raw: bool = False) -> None:
        """Display ``content`` (an object, or with ``raw`` a MIME bundle dict) in place."""
        from IPython.display import display

        if self._handle is None:
            self._handle = display(content, raw=raw, display_id=True)
        else:
            self._handle.update(content, raw=raw)
