"""d2l's linear regression (3.3): recover w = [2, -3.4], b = 4.2 from 1000 noisy examples."""

from __future__ import annotations

import torch
from torch import nn

import trainingloop as tl
from trainingloop.examples import Options, fit, outputs

DESCRIPTION = "d2l linear regression on synthetic data (w=[2,-3.4], b=4.2)"
DEFAULTS = {"epochs": 3, "batch_size": 10, "lr": 0.03}
TRUE_W, TRUE_B = (2.0, -3.4), 4.2


def run(options: Options) -> tl.History:
    """Train; prints the estimation errors of w and b."""
    o = options.resolved(DEFAULTS)
    torch.manual_seed(0)
    data = tl.datasets.synthetic_linear(TRUE_W, TRUE_B, 1000).shuffle(seed=0).batch(o.batch_size)
    net = nn.Linear(2, 1)
    nn.init.normal_(net.weight, 0, 0.01)
    nn.init.zeros_(net.bias)
    loop = tl.TrainingLoop(data, optimizer=torch.optim.SGD(net.parameters(), lr=o.lr),
                           loss=nn.functional.mse_loss, callbacks=outputs(o))
    history = fit(loop, net, o)
    w_error = torch.tensor(TRUE_W) - net.weight.detach().cpu().reshape(-1)
    print(f"error in estimating w: {w_error.tolist()}; b: {TRUE_B - net.bias.item():.5f}")
    return history
