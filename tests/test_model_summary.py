"""summary: each layer's name, type, output shape and parameters; totals; nothing changed."""

from __future__ import annotations

import torch
from torch import nn

import trainingloop as tl


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.shared = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)
        self.unused = nn.Linear(3, 3)  # never called: in the totals, not in the rows
        for p in self.features[0].parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)
        return self.head(torch.relu(self.shared(torch.relu(self.shared(x)))))


def test_summary_rows_and_totals() -> None:
    model = Net()
    model.train()
    model.features[1].eval()
    modes = [m.training for m in model.modules()]
    example = torch.randn(2, 1, 8, 8)
    rng = torch.get_rng_state()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    text = tl.summary(model, example)
    lines = text.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:-4]}
    assert list(rows) == ["(model)", "features", "features.0", "features.1", "features.2",
                          "features.3", "shared", "head"]  # call order; "shared" listed once
    assert rows["features.0"][1:] == ["Conv2d", "(2,", "4,", "8,", "8)", "40"]
    assert rows["features.3"][1:] == ["MaxPool2d", "(2,", "4,", "4,", "4)", "0"]
    assert rows["shared"][-1] == "4,160" and rows["head"][-1] == "650"
    assert rows["(model)"][2:4] == ["(2,", "10)"]
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert lines[-3] == f"Total parameters: {total:,}"
    assert lines[-2] == f"Trainable parameters: {total - frozen:,}"
    assert lines[-1] == f"Non-trainable parameters: {frozen:,}"
    listed = sum(int(r[-1].replace(",", "")) for r in rows.values())
    assert listed == total - sum(p.numel() for p in model.unused.parameters())
    # nothing changed: modes, batch-norm statistics, RNG
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(torch.get_rng_state(), rng)
