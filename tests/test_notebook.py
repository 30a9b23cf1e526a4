"""examples/quickstart.ipynb runs headless in a real kernel: bars and figure update in place."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"
EPOCHS = 5

pytestmark = pytest.mark.timeout(400)


class _Counting(NotebookClient):
    """Counts the kernel's messages by type (to see that outputs were updated in place)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counts: dict[str, int] = {}

    def process_message(self, msg: dict, cell: Any, cell_index: int) -> Any:
        kind = msg["msg_type"]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return super().process_message(msg, cell, cell_index)


def test_quickstart_notebook_runs_with_live_bars_and_figure(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = _Counting(notebook, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert [o for o in outputs if o.output_type == "error"] == []
    assert not [o for o in outputs if o.output_type == "stream" and o.name == "stderr"]

    fit_cell = notebook.cells[1].outputs
    text = "".join(o.text for o in fit_cell if o.output_type == "stream")
    # Printed lines: the epoch headers and rates only, never a line per batch or per refresh.
    lines = text.splitlines()
    assert lines[0::2] == [f"Epoch {epoch}/{EPOCHS}" for epoch in range(1, EPOCHS + 1)]
    assert len(lines) == 2 * EPOCHS and all(x.startswith("examples/second: ") for x in lines[1::2])
    displays = [o for o in fit_cell if o.output_type == "display_data"]
    bars = [o for o in displays if "text/html" in o.data]
    figures = [o for o in displays if "image/png" in o.data]
    assert len(bars) == 2 * EPOCHS and len(figures) == 1  # one per phase, one figure in all
    assert len(displays) == len(bars) + len(figures)
    line = re.compile(r"^(45/45|2/2) \[=+\] - loss: \d\.\d{4} - accuracy: \d\.\d{4} "
                      r"\[\d\d:\d\d<00:00, [\d.]+ batch/s\]$")
    for bar in bars:  # each shows its phase's final state
        assert line.match(bar.data["text/plain"]), bar.data["text/plain"]
        assert "<progress" in bar.data["text/html"]
    assert [b.data["text/plain"].split()[0] for b in bars] == ["45/45", "2/2"] * EPOCHS
    # Shown once each, then replaced in place: the figure after every epoch after the first.
    assert client.counts.get("update_display_data", 0) >= 2 * EPOCHS + EPOCHS - 1
    assert client.counts["display_data"] == len(displays)
    assert figures[0].data["image/png"]  # base64 PNG of the curves
    assert (tmp_path / "run" / "quickstart" / "curves.png").stat().st_size > 0

    accuracies = "".join(o.text for o in notebook.cells[2].outputs if o.output_type == "stream")
    assert float(accuracies.strip("[]\n").split(",")[-1]) > 0.9
