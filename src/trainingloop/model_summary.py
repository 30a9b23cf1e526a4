"""``summary(model, example_input)``: a table of the layers a forward pass goes through.

Forward hooks on every submodule record, for one forward pass of ``example_input`` (in eval
mode, without gradients), the order modules are called in and the shape of what each returns.
Each row is one module (its first call): name, type, output shape and the parameters it owns
directly (not its children's, and a shared parameter only where first seen), so the column adds
up to the total of the parameters the pass reached. Totals count every parameter of the model
once, trainable (``requires_grad``) and not. The model's train/eval mode and the RNG states are
put back afterwards.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainingloop import checkpointing
from trainingloop.step import describe

__all__ = ["summary"]


def summary(model: nn.Module, example_input: Any) -> str:
    """The model's layers as a table, as ``model(example_input)`` runs them, with totals.

    >>> import torch, trainingloop as tl
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> print(tl.summary(net, torch.zeros(1, 4)).splitlines()[-3])
    Total parameters: 58
    """
    names = {id(module): name for name, module in model.named_modules()}
    rows: list[tuple[str, str, str, int]] = []
    seen: set[int] = set()  # modules already listed
    counted: set[int] = set()  # parameters already counted in a row
    order: list[nn.Module] = []
    shapes: dict[int, str] = {}

    def before(module: nn.Module, args: Any) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    def after(module: nn.Module, args: Any, output: Any) -> None:
        shapes.setdefault(id(module), describe(output))

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(before))
        handles.append(module.register_forward_hook(after))
    modes = [(m, m.training) for m in model.modules()]
    rng = checkpointing.rng_state()
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
        checkpointing.restore_rng(rng)
    for module in order:
        own = 0
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in counted:
                counted.add(id(parameter))
                own += parameter.numel()
        name = names.get(id(module), "?") or "(model)"
        rows.append((name, type(module).__name__, shapes.get(id(module), "?"), own))
    unique = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    frozen = sum(p.numel() for p in unique if not p.requires_grad)
    header = ("Layer", "Type", "Output shape", "Params")
    table = [header, *((n, t, s, f"{c:,}") for n, t, s, c in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(4)]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join([*(row[i].ljust(widths[i]) for i in range(3)),
                          row[3].rjust(widths[3])]).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *(line(r) for r in table[1:]), rule,
                      f"Total parameters: {trainable + frozen:,}",
                      f"Trainable parameters: {trainable:,}",
                      f"Non-trainable parameters: {frozen:,}"])
