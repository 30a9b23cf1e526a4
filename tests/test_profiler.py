"""Profiler: a trace of the chosen training steps, read back, holding the model's operators."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from conftest import classification_batches

import trainingloop as tl


def test_trace_of_the_active_steps_of_the_first_epoch(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    profiler = tl.Profiler(tmp_path / "profile", wait=1, warmup=1, active=3)
    loop = tl.TrainingLoop(classification_batches(8), classification_batches(2, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, callbacks=[profiler],
                           include_default_callbacks=False)
    loop.fit(model, epochs=2, device="cpu")
    files = sorted((tmp_path / "profile").iterdir())
    assert files == profiler.trace_files and len(files) == 1  # the first epoch only
    assert files[0].name.endswith(".pt.trace.json")
    events = json.loads(files[0].read_text())["traceEvents"]
    names = Counter(e.get("name") for e in events)
    steps = sorted(n for n in names if str(n).startswith("ProfilerStep#"))
    assert steps == ["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]  # after wait, warmup
    assert names["aten::addmm"] == 3 * 2  # two linear layers' forward in each active step
    assert names["aten::mm"] >= 3 * 2  # their backward
    assert any("autograd" in str(n).lower() or "Backward" in str(n) for n in names)
