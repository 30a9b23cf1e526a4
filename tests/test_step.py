"""The step's options: compile, mixed precision, gradient accumulation, clipping."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import classification_batches

import trainingloop as tl


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _fit(model: torch.nn.Module, batches: list, **fit_kwargs: object) -> tl.History:
    loop = tl.TrainingLoop(batches, classification_batches(2, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           include_default_callbacks=False)
    return loop.fit(model, epochs=2, device="cpu", **fit_kwargs)


def test_compiled_step_matches_eager() -> None:
    batches = classification_batches(8, batch=16)
    eager, compiled = _mlp(), _mlp()
    eager_history = _fit(eager, batches)
    compiled_history = _fit(compiled, batches, compile=True)
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert compiled_history["train/loss"] == pytest.approx(eager_history["train/loss"], rel=1e-5)
    assert compiled_history["validation/accuracy"] == eager_history["validation/accuracy"]


def test_a_custom_step_calls_the_compiled_model_under_compile() -> None:
    # nanoGPT's way (the model computes its loss): with compile=True the custom step is handed
    # the compiled module, so its forward runs as a graph (it ran eagerly before; found on an
    # H200 where GPT-2 trained at eager speed under fit(compile=True, step=...)).
    seen: list[type] = []

    def step(loop: tl.TrainingLoop, model: torch.nn.Module) -> torch.Tensor:
        seen.append(type(model))
        output = model(loop.last_input)
        loop.last_output = output
        return torch.nn.functional.cross_entropy(output, loop.last_target)

    batches = classification_batches(8, batch=16)
    eager, compiled = _mlp(), _mlp()
    _fit(eager, batches, step=step)
    assert set(seen) == {torch.nn.Sequential}
    seen.clear()
    _fit(compiled, batches, step=step, compile={"backend": "eager"})
    assert set(seen) == {torch._dynamo.eval_frame.OptimizedModule}
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b)


def test_cudagraph_modes_keep_the_optimizer_update_out_of_cuda_graphs() -> None:
    from trainingloop.step import _uses_cudagraphs, _without_cudagraphs

    assert _without_cudagraphs({"mode": "reduce-overhead", "fullgraph": True}) == {
        "fullgraph": True}
    assert _without_cudagraphs({"mode": "max-autotune"}) == {
        "mode": "max-autotune-no-cudagraphs"}
    assert _without_cudagraphs({"options": {"triton.cudagraphs": True, "x": 1}}) == {
        "options": {"x": 1}}
    assert _without_cudagraphs({"backend": "eager"}) == {"backend": "eager"}
    assert not _uses_cudagraphs({"mode": "max-autotune-no-cudagraphs"})


def test_a_fused_optimizer_is_not_compiled_and_keeps_its_float_rates() -> None:
    from trainingloop.step import Step, StepOptions

    model = _mlp()
    fused = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    step = Step(model, fused, torch.nn.functional.cross_entropy, torch.device("cpu"),
                lambda event: None, StepOptions(compile={"backend": "eager"}))
    assert step.compiled and step.optimizer_step == fused.step
    assert type(fused.param_groups[0]["lr"]) is float
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = Step(model, plain, torch.nn.functional.cross_entropy, torch.device("cpu"),
                lambda event: None, StepOptions(compile={"backend": "eager"}))
    assert step.optimizer_step != plain.step and type(plain.param_groups[0]["lr"]) is torch.Tensor
    step.close()


def test_compiled_fit_leaves_the_users_objects_plain(tmp_path: Path) -> None:
    # The step compiles its own callables: the user's model stays the module they passed (no
    # _orig_mod. prefixes in its state_dict or in checkpoints), and the learning rate that the
    # compiled optimizer needed as a tensor is a float again after the fit.
    from safetensors.torch import load_file

    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loop = tl.TrainingLoop(classification_batches(4, batch=16), optimizer=optimizer,
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[tl.Checkpoint(tmp_path)], include_default_callbacks=False)
    loop.fit(model, epochs=1, device="cpu", compile=True)
    assert loop.model is model
    saved = load_file(tmp_path / "last" / "model.safetensors")
    assert sorted(saved) == sorted(_mlp().state_dict()) == sorted(model.state_dict())
    assert type(optimizer.param_groups[0]["lr"]) is float and optimizer.param_groups[0]["lr"] == 0.1


def test_compile_failure_falls_back_to_eager_with_a_warning() -> None:
    batches = classification_batches(4)
    eager, fallback = _mlp(), _mlp()
    _fit(eager, batches)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        _fit(fallback, batches, compile={"backend": "no-such-backend"})
    for a, b in zip(eager.parameters(), fallback.parameters()):
        assert torch.equal(a, b)


def test_bf16_mixed_trains_on_cpu() -> None:
    model = _mlp()
    dtypes: list = []
    batches = classification_batches(20, batch=16)
    loop = tl.TrainingLoop(batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                           loss=torch.nn.functional.cross_entropy,
                           include_default_callbacks=False,
                           callbacks=[lambda lp, ev: dtypes.append(lp.last_output.dtype)
                                      if ev is tl.Event.BATCH_END else None])
    history = loop.fit(model, epochs=5, device="cpu", precision="bf16-mixed")
    assert set(dtypes) == {torch.bfloat16}
    assert model[0].weight.dtype == torch.float32
    assert history["train/loss"][-1] < history["train/loss"][0]


def test_fp16_mixed_uses_a_grad_scaler() -> None:
    model = _mlp()
    batches = classification_batches(20, batch=16)
    loop = tl.TrainingLoop(batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                           loss=torch.nn.functional.cross_entropy,
                           include_default_callbacks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = loop.fit(model, epochs=5, device="cpu", precision="16-mixed")
    assert loop._step is not None and loop._step.scaler is not None
    assert "scale" in loop._step.scaler.state_dict()
    assert history["train/loss"][-1] < history["train/loss"][0]


def test_fp16_mixed_runs_the_forward_in_float16_with_float32_master_weights() -> None:
    model = _mlp()
    inside: list[tuple[torch.dtype, torch.dtype]] = []  # (Linear output, its weight) per forward
    model[0].register_forward_hook(
        lambda module, args, output: inside.append((output.dtype, module.weight.dtype)))
    grads: list[torch.dtype] = []
    batches = classification_batches(6, batch=16)
    loop = tl.TrainingLoop(batches, classification_batches(2, batch=16, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                           loss=torch.nn.functional.cross_entropy,
                           include_default_callbacks=False,
                           callbacks=[lambda lp, ev: grads.extend(p.grad.dtype for p in
                                                                  lp.model.parameters())
                                      if ev is tl.Event.UPDATE_START else None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop.fit(model, epochs=2, device="cpu", precision="16-mixed")
    assert inside == [(torch.float16, torch.float32)] * (2 * (6 + 2))  # training and validation
    assert set(grads) == {torch.float32} and len(grads) == 2 * 6 * 4
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert loop.last_output.dtype == torch.float16


def test_accumulating_four_batches_of_16_equals_one_of_64() -> None:
    big = classification_batches(3, batch=64, seed=4)
    small = [(x[i:i + 16], y[i:i + 16]) for x, y in big for i in range(0, 64, 16)]
    reference, accumulated = _mlp(), _mlp()
    steps = []
    _fit(reference, big)
    loop = tl.TrainingLoop(small, optimizer=torch.optim.SGD(accumulated.parameters(), lr=0.1,
                                                            momentum=0.9),
                           loss=torch.nn.functional.cross_entropy,
                           include_default_callbacks=False,
                           callbacks=[lambda lp, ev: steps.append(lp.global_step)
                                      if ev is tl.Event.UPDATE_START else None])
    loop.fit(accumulated, epochs=2, device="cpu", accumulate_grad_batches=4)
    assert steps == [0, 1, 2, 3, 4, 5]
    for a, b in zip(reference.parameters(), accumulated.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_clipping_bounds_the_gradient_norm() -> None:
    model = _mlp()
    batches = [(x * 100, y) for x, y in classification_batches(5)]
    norms, steps = [], []
    before: dict = {}

    def watch(loop: tl.TrainingLoop, event: tl.Event) -> None:
        params = list(loop.model.parameters())
        if event is tl.Event.UPDATE_START:
            norms.append(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params])).item())
            before["w"] = [p.detach().clone() for p in params]
        if event is tl.Event.BATCH_END and "w" in before:
            delta = torch.stack([torch.linalg.vector_norm(p.detach() - w)
                                 for p, w in zip(params, before.pop("w"))])
            steps.append(torch.linalg.vector_norm(delta).item())

    loop = tl.TrainingLoop(batches, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                           loss=torch.nn.functional.cross_entropy,
                           include_default_callbacks=False, callbacks=[watch])
    loop.fit(model, epochs=1, device="cpu", clip_grad_norm=0.5)
    assert max(norms) > 5  # the raw gradients are large...
    assert all(s <= 0.5 + 1e-5 for s in steps)  # ...the applied update (lr 1) is clipped


def test_bad_step_options() -> None:
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        _fit(_mlp(), classification_batches(2), accumulate_grad_batches=0)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        _fit(_mlp(), classification_batches(2), clip_grad_norm=-1.0)
