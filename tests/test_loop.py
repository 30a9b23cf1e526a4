"""The loop end to end: d2l's linear regression, updaters, custom steps, errors, host reads."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import classification_batches, wandb_offline

import trainingloop as tl
from trainingloop.callbacks import progress
from trainingloop.callbacks.progress import ProgressPrinter

TRUE_W, TRUE_B = [2.0, -3.4], 4.2


def _linear_data() -> tl.data.ArrayDataset:
    return tl.datasets.synthetic_linear(TRUE_W, TRUE_B, 1000).shuffle(seed=0).batch(10)


def _linreg_model() -> torch.nn.Module:
    net = torch.nn.Linear(2, 1)
    net.weight.data.normal_(0, 0.01)
    net.bias.data.fill_(0)
    return net


def test_d2l_linear_regression_recovers_w_and_b() -> None:
    net = _linreg_model()
    loop = tl.TrainingLoop(_linear_data(), optimizer=torch.optim.SGD(net.parameters(), lr=0.03),
                           loss=torch.nn.functional.mse_loss, include_default_callbacks=False)
    history = loop.fit(net, epochs=3, device="cpu")
    assert torch.allclose(net.weight.data[0], torch.tensor(TRUE_W), atol=0.02)
    assert abs(net.bias.item() - TRUE_B) < 0.02
    assert history["train/loss"][-1] < 1e-3
    assert loop.global_step == 300


def test_from_scratch_updater_d2l_sgd() -> None:
    w = torch.normal(0, 0.01, size=(2, 1), requires_grad=True)
    b = torch.zeros(1, requires_grad=True)

    class LinReg(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = torch.nn.Parameter(w), torch.nn.Parameter(b)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w + self.b

    net = LinReg()

    def squared_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((y_hat - y.reshape(y_hat.shape)) ** 2 / 2).sum()

    def sgd(loop: tl.TrainingLoop) -> None:  # d2l's sgd(params, lr, batch_size)
        with torch.no_grad():
            for p in loop.model.parameters():
                p -= 0.03 * p.grad / loop.last_input.shape[0]

    loop = tl.TrainingLoop(_linear_data(), optimizer=sgd, loss=squared_loss,
                           include_default_callbacks=False)
    loop.fit(net, epochs=3, device="cpu")
    assert torch.allclose(net.w.data.reshape(-1), torch.tensor(TRUE_W), atol=0.02)
    assert abs(net.b.item() - TRUE_B) < 0.02
    assert all(p.grad is None for p in net.parameters())


def test_custom_step_replaces_forward_and_loss() -> None:
    calls = []

    def step(loop: tl.TrainingLoop, model: torch.nn.Module) -> torch.Tensor:
        calls.append(loop.batch_index)
        loop.last_output = model(loop.last_input)
        return torch.nn.functional.cross_entropy(loop.last_output, loop.last_target)

    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(classification_batches(3), optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), metrics=["accuracy"], include_default_callbacks=False)
    history = loop.fit(model, epochs=1, device="cpu", step=step)
    assert calls == [0, 1, 2]
    assert 0.0 <= history["train/accuracy"][0] <= 1.0


def test_history_evaluate_and_predict() -> None:
    model = torch.nn.Linear(5, 3)
    train, val = classification_batches(4), classification_batches(2, seed=1)
    loop = tl.TrainingLoop(train, val, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           include_default_callbacks=False)
    history = loop.fit(model, epochs=2, device="auto")
    assert [r["epoch"] for r in history.epochs] == [1, 2]
    assert set(history.epochs[0]) == {"epoch", "train/loss", "train/accuracy",
                                      "validation/loss", "validation/accuracy",
                                      "examples_per_second"}
    result = loop.evaluate(model, val, device="cpu")
    assert result["loss"] == pytest.approx(history["validation/loss"][-1], rel=1e-6)
    x = torch.cat([b[0] for b in val])
    y = torch.cat([b[1] for b in val])
    expected = (model(x).argmax(1) == y).float().mean().item()
    assert result["accuracy"] == pytest.approx(expected)
    outputs = loop.predict(model, val, device="cpu")
    assert len(outputs) == 2 and outputs[0].shape == (4, 3)
    assert torch.allclose(loop.predict(model, [b[0] for b in val])[1], outputs[1])
    with pytest.raises(KeyError, match="train/acc"):
        history["train/acc"]


def test_devices() -> None:
    assert tl.try_gpu() == (torch.device("cuda:0") if torch.cuda.is_available()
                            else torch.device("cpu"))
    assert tl.try_gpu(99) == torch.device("cpu")


def _small_loop(**kwargs: object) -> tuple[tl.TrainingLoop, torch.nn.Module]:
    model = torch.nn.Linear(5, 3)
    defaults: dict = dict(optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                          loss=torch.nn.functional.cross_entropy,
                          include_default_callbacks=False)
    defaults.update(kwargs)
    training = defaults.pop("training", classification_batches(3))
    return tl.TrainingLoop(training, **defaults), model


def test_target_shape_error_names_batch_and_shapes() -> None:
    batches = classification_batches(3)
    batches[2] = (batches[2][0], torch.zeros(4, 7))  # a target that does not fit
    loop, model = _small_loop(training=batches)
    with pytest.raises(ValueError, match=r"training batch 2.*\(4, 3\).*\(4, 7\)"):
        loop.fit(model, epochs=1, device="cpu")


def test_input_shape_error_names_batch_and_shape() -> None:
    loop, model = _small_loop(training=[(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ValueError, match=r"training batch 0.*\(4, 6\)"):
        loop.fit(model, epochs=1, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "fit_kwargs", "message"),
    [
        ({"training": []}, {}, "empty"),
        ({}, {"epochs": -1}, "epochs must be"),
        ({"metrics": ["acc"]}, {}, "unknown metric name 'acc'"),
        ({}, {"device": "cuda:7"}, "cuda:7"),
        ({}, {"device": "banana"}, "banana"),
        ({}, {"precision": "8"}, "precision '8'"),
    ],
)
def test_bad_input_fails_before_training(kwargs: dict, fit_kwargs: dict, message: str) -> None:
    seen: list = []
    fit_kwargs = {"epochs": 1, "device": "cpu", **fit_kwargs}
    with pytest.raises(ValueError, match=message):
        loop, model = _small_loop(**kwargs)
        loop.fit(model, callbacks=[lambda lp, ev: seen.append(ev)], **fit_kwargs)
    assert tl.Event.BATCH_START not in seen


def test_non_pair_batch_is_named() -> None:
    loop, model = _small_loop(training=[torch.randn(4, 5)])
    with pytest.raises(ValueError, match="training batch 0 is a Tensor"):
        loop.fit(model, epochs=1, device="cpu")


def _count_host_reads(monkeypatch: pytest.MonkeyPatch, batches: int,
                      callbacks: Sequence[object] = ()) -> tuple[int, int]:
    """(host reads in the whole fit, those inside batches: from the first BATCH_START handler
    to the last BATCH_END handler of each batch, the step and every callback included)."""
    reads, in_batches = [0, 0], [False]

    def opens(loop: tl.TrainingLoop, event: tl.Event) -> None:  # the first callback
        if event is tl.Event.BATCH_START:
            in_batches[0] = True

    def closes(loop: tl.TrainingLoop, event: tl.Event) -> None:  # the last callback
        if event is tl.Event.BATCH_END:
            in_batches[0] = False

    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: object, _original: object = original) -> object:
            reads[0] += 1
            reads[1] += in_batches[0]
            return _original(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, counted)
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(
        classification_batches(batches), classification_batches(2, seed=1),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=torch.nn.functional.cross_entropy, metrics=["accuracy", "top5_accuracy", "mcc"],
        callbacks=[opens, ProgressPrinter(stream=io.StringIO()), *callbacks, closes],
    )
    loop.fit(model, epochs=2, device="cpu")
    monkeypatch.undo()
    return reads[0], reads[1]


@pytest.mark.parametrize("extra", [(), ("EMA", "GradientMonitor")])
def test_no_host_reads_per_training_step(monkeypatch: pytest.MonkeyPatch,
                                         extra: tuple[str, ...]) -> None:
    (few, _) = _count_host_reads(monkeypatch, 5, [getattr(tl, name)() for name in extra])
    (many, _) = _count_host_reads(monkeypatch, 50, [getattr(tl, name)() for name in extra])
    assert few == many, f"host reads grow with steps: {few} for 5 batches, {many} for 50"
    assert few <= 2 * 2 * 5 * 2  # epochs x phases x metrics, read at phase ends (x2 slack)


def test_no_host_reads_per_step_with_every_tracker_attached(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import optuna

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for batches in (5, 50):
        wandb_offline(monkeypatch, tmp_path / "wandb")
        trial = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}").ask()
        trackers = [tl.MLflowLogger(tracking_uri=store, log_every_n_steps=1),
                    tl.WandbLogger(mode="offline", log_every_n_steps=1),
                    tl.OptunaPruning(trial), tl.CSVLogger(tmp_path / f"{batches}.csv"),
                    tl.TensorBoardLogger(tmp_path / "tensorboard")]
        _, in_batches = _count_host_reads(monkeypatch, batches, trackers)
        # Every update is logged (log_every_n_steps=1), all from the device-side buffers.
        assert in_batches == 0, f"{in_batches} host reads inside the batch loops ({batches} batches)"
        assert trackers[2].pruned_at is None and trial.study.trials[0].intermediate_values


def test_progress_timing_is_tqdm_like() -> None:
    assert progress.format_timing(30, 120, 3.0, tokens=30 * 64 * 10) == (
        "00:03<00:09, 10.0 batch/s, 6.4k tokens/s")
    assert progress.format_timing(5, None, 10.0) == "00:10<?, 2.00 s/batch"
    assert progress.format_timing(0, 10, 0.0) == "00:00<?, 0.0 batch/s"
    assert progress.format_duration(3725.2) == "1:02:05"
    assert progress.token_count(torch.zeros(4, 16, dtype=torch.long)) == 64
    assert progress.token_count(torch.zeros(4, 16)) == 0  # floats are not tokens
    assert progress.token_count(torch.zeros(16, dtype=torch.long)) == 0  # no sequence axis


def test_plain_lines_end_with_elapsed_remaining_and_rates() -> None:
    out = io.StringIO()
    tokens = [(torch.randint(0, 50, (4, 6)), torch.randint(0, 3, (4,))) for _ in range(3)]

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding, self.head = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embedding(x).mean(1))

    model = Bag()
    loop = tl.TrainingLoop(tokens, tokens[:1], optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[ProgressPrinter(stream=out)], include_default_callbacks=False)
    loop.fit(model, epochs=1, device="cpu")
    lines = out.getvalue().splitlines()
    timing = r" \[\d\d:\d\d<00:00, [\d.]+k? batch/s, [\d.]+k? tokens/s\]$"
    assert re.match(r"^3/3 \[=+\] - loss: \d\.\d{4}" + timing, lines[1]), lines[1]
    assert re.match(r"^1/1 \[=+\] - loss: \d\.\d{4}" + timing, lines[2]), lines[2]


def test_timing_is_computed_at_the_refresh_rate_not_per_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def draws(batches: int) -> int:
        calls = [0]
        real = progress.format_timing

        def counted(*args: object, **kwargs: object) -> str:
            calls[0] += 1
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(progress, "format_timing", counted)
        loop, model = _small_loop(training=classification_batches(batches), callbacks=[
            ProgressPrinter(stream=io.StringIO(), terminal=True, refresh_rate=3600.0)])
        loop.fit(model, epochs=2, device="cpu")
        return calls[0]

    assert draws(5) == draws(50) == 2  # one final draw per training phase


def test_progress_printer_plain_format() -> None:
    out = io.StringIO()
    loop, model = _small_loop(metrics=["accuracy"], callbacks=[ProgressPrinter(stream=out)])
    loop.fit(model, epochs=2, device="cpu")
    lines = out.getvalue().splitlines()
    assert lines[0] == "Epoch 1/2"
    assert lines[1].startswith("3/3 [==============================] - loss: ")
    assert " - accuracy: " in lines[1]
    assert lines[2].startswith("examples/second: ")
    assert lines[3] == "Epoch 2/2"


def test_progress_printer_terminal_mode_draws_with_rich() -> None:
    out = io.StringIO()
    loop, model = _small_loop(callbacks=[ProgressPrinter(stream=out, terminal=True,
                                                         refresh_rate=0.0)])
    loop.fit(model, epochs=1, device="cpu")
    text = out.getvalue()
    assert "train" in text and "3/3" in text and "loss:" in text and "batch/s" in text


def test_default_callbacks_come_first() -> None:
    loop, _ = _small_loop(include_default_callbacks=True, callbacks=[lambda lp, ev: None])
    assert isinstance(loop.callbacks[0], ProgressPrinter)


def test_import_loads_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = ("import sys, trainingloop; heavy = [m for m in ('rich', 'matplotlib', 'tensorboard',"
            " 'sklearn', 'safetensors', 'torchmetrics', 'mlflow', 'wandb', 'optuna', 'IPython')"
            " if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_evaluate_inside_a_fit_changes_nothing_of_the_fit() -> None:
    # A callback that evaluates on other data mid-fit must not overwrite the fit's metrics,
    # History, model or counters.
    def run(evaluate: bool) -> tuple[tl.History, list]:
        torch.manual_seed(0)
        model = torch.nn.Linear(5, 3)
        seen: list = []

        def probe(loop: tl.TrainingLoop, event: tl.Event) -> None:
            if evaluate and event is tl.Event.BATCH_END and loop.batch_index == 1:
                seen.append(loop.evaluate(loop.model, classification_batches(2, seed=5),
                                          device="cpu"))
            if event is tl.Event.BATCH_END:
                seen.append((loop.is_training, loop.batch_index, loop.batch_count,
                             loop.model is model))

        loop = tl.TrainingLoop(classification_batches(4), classification_batches(2, seed=1),
                               optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                               loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                               callbacks=[probe], include_default_callbacks=False)
        return loop.fit(model, epochs=2, device="cpu"), seen

    plain, plain_seen = run(False)
    probed, probed_seen = run(True)
    def no_rate(h: tl.History) -> list:
        return [{k: v for k, v in r.items() if k != "examples_per_second"} for r in h.epochs]

    assert no_rate(probed) == no_rate(plain)
    assert [s for s in probed_seen if isinstance(s, tuple)] == plain_seen
    assert all(set(s) == {"loss", "accuracy"} for s in probed_seen if isinstance(s, dict))


def test_predict_runs_under_the_fits_precision() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    loop = tl.TrainingLoop(classification_batches(2), optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), loss=torch.nn.functional.cross_entropy,
        include_default_callbacks=False)
    assert loop.predict(model, classification_batches(1), device="cpu")[0].dtype == torch.float32
    loop.fit(model, epochs=1, device="cpu", precision="bf16-mixed")
    outputs = loop.predict(model, classification_batches(2), device="cpu")
    assert [o.dtype for o in outputs] == [torch.bfloat16] * 2


# -- modes: train for training batches, eval and no grad everywhere else ------------------------
class _ModeSpy(torch.nn.Module):
    """A linear classifier that records ``(training, child training, grad enabled)`` per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(5, 3)
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, self.linear.training, torch.is_grad_enabled()))
        return self.linear(x)


TRAIN, EVAL = (True, True, True), (False, False, False)


def test_fit_trains_in_train_mode_and_validates_in_eval_mode_without_grad() -> None:
    model = _ModeSpy()
    phases: list[str] = []
    loop = tl.TrainingLoop(classification_batches(3), classification_batches(2, seed=1),
                           optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, include_default_callbacks=False,
                           callbacks=[lambda lp, ev: phases.append("t" if lp.is_training else "v")
                                      if ev is tl.Event.BATCH_START else None])
    loop.fit(model, epochs=2, device="cpu")
    assert "".join(phases) == "tttvv" * 2
    # epoch 2's training batches come after a validation pass: train mode again
    assert model.seen == [TRAIN] * 3 + [EVAL] * 2 + [TRAIN] * 3 + [EVAL] * 2


@pytest.mark.parametrize("train_mode", [True, False])
def test_evaluate_and_predict_run_in_eval_mode_and_restore_the_mode(train_mode: bool) -> None:
    model = _ModeSpy()
    model.train(train_mode)
    data = classification_batches(3)
    loop = tl.TrainingLoop(data, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, include_default_callbacks=False)
    loop.evaluate(model, data, device="cpu")
    assert model.seen == [EVAL] * 3
    assert (model.training, model.linear.training) == (train_mode, train_mode)
    model.seen.clear()
    loop.predict(model, data, device="cpu")
    assert model.seen == [EVAL] * 3
    assert (model.training, model.linear.training) == (train_mode, train_mode)
    assert torch.is_grad_enabled()


def test_evaluate_twice_with_dropout_and_batchnorm_is_repeatable_and_changes_no_buffer() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    train, val = classification_batches(6, batch=8), classification_batches(3, batch=8, seed=1)
    loop = tl.TrainingLoop(train, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           include_default_callbacks=False)
    loop.fit(model, epochs=1, device="cpu")  # running statistics away from their initial values
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert int(before["1.num_batches_tracked"]) == 6
    first = loop.evaluate(model, val, device="cpu")
    second = loop.evaluate(model, val, device="cpu")
    assert first == second
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    # the reference: the same model in eval mode by hand, dropout off, running statistics used
    model.eval()
    with torch.no_grad():
        x, y = torch.cat([b[0] for b in val]), torch.cat([b[1] for b in val])
        logits = model(x)
    assert first["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(),
                                          rel=1e-6)
    assert first["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())


def test_show_lists_each_event_in_order_with_its_callbacks(
        capsys: pytest.CaptureFixture[str]) -> None:
    def everything(loop: tl.TrainingLoop, event: tl.Event) -> None:
        pass

    loop, _ = _small_loop(include_default_callbacks=True,
                          callbacks=[tl.EMA(), tl.GradientMonitor(), everything])
    loop.show()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [event.name for event in tl.Event]
    listeners = {line.split()[0]: line.split(None, 1)[1].split(", ") for line in lines}
    assert listeners["FIT_START"] == ["ProgressPrinter", "EMA", "GradientMonitor", "everything"]
    assert listeners["UPDATE_START"] == ["GradientMonitor", "everything"]
    assert listeners["BATCH_END"] == ["ProgressPrinter", "EMA", "everything"]
    assert listeners["VALIDATION_START"] == ["ProgressPrinter", "EMA", "everything"]
    assert listeners["INFERENCE_PREDICTION_END"] == ["everything"]
    assert lines[2].startswith("    TRAINING_START")  # nested as the loop runs them
