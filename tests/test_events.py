"""Golden event traces: a normal fit and each Cancel*, after S4TF's semantics."""

from __future__ import annotations

import pytest
import torch
from conftest import classification_batches

import trainingloop as tl
from trainingloop.events import Event

E = Event


def _loop(callbacks: list, train: int = 3, val: int | None = 2) -> tuple[tl.TrainingLoop, torch.nn.Module]:
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(
        classification_batches(train),
        classification_batches(val, seed=1) if val is not None else None,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=torch.nn.functional.cross_entropy,
        metrics=["accuracy"],
        callbacks=callbacks,
        include_default_callbacks=False,
    )
    return loop, model


def _trace(raise_at: dict | None = None, epochs: int = 2, **kwargs) -> list:
    events: list = []
    raise_at = raise_at or {}

    def record(loop: tl.TrainingLoop, event: Event) -> None:
        events.append(event)
        key = (event, loop.epoch_index, loop.batch_index if event in (
            E.BATCH_START, E.BATCH_END, E.UPDATE_START, E.INFERENCE_PREDICTION_END) else None,
            loop.is_training)
        for (ev, epoch, batch, training), error in raise_at.items():
            if (ev, epoch, batch, training) == key:
                raise error()

    loop, model = _loop([record], **kwargs)
    loop.fit(model, epochs=epochs, device="cpu")
    return events


def _epoch(train_batches: int = 3, val_batches: int = 2) -> list:
    train = [E.BATCH_START, E.UPDATE_START, E.BATCH_END] * train_batches
    val = [E.BATCH_START, E.INFERENCE_PREDICTION_END, E.BATCH_END] * val_batches
    return [E.EPOCH_START, E.TRAINING_START, *train, E.TRAINING_END,
            E.VALIDATION_START, *val, E.VALIDATION_END, E.EPOCH_END]


def test_normal_fit_trace() -> None:
    assert _trace() == [E.FIT_START, *_epoch(), *_epoch(), E.FIT_END]


def test_no_validation_phase_without_validation_data() -> None:
    events = _trace(val=None, epochs=1)
    assert E.VALIDATION_START not in events
    assert events[-3:] == [E.TRAINING_END, E.EPOCH_END, E.FIT_END]


def test_cancel_batch_skips_step_but_fires_batch_end() -> None:
    events = _trace({(E.BATCH_START, 0, 1, True): tl.CancelBatch}, epochs=1)
    train = [E.BATCH_START, E.UPDATE_START, E.BATCH_END, E.BATCH_START, E.BATCH_END,
             E.BATCH_START, E.UPDATE_START, E.BATCH_END]
    val = [E.BATCH_START, E.INFERENCE_PREDICTION_END, E.BATCH_END] * 2
    assert events == [E.FIT_START, E.EPOCH_START, E.TRAINING_START, *train, E.TRAINING_END,
                      E.VALIDATION_START, *val, E.VALIDATION_END, E.EPOCH_END, E.FIT_END]


def test_cancel_batch_at_update_start_skips_the_update() -> None:
    loop, model = _loop([])
    before = model.weight.detach().clone()

    class Veto(tl.Callback):
        def on_update_start(self, loop: tl.TrainingLoop) -> None:
            raise tl.CancelBatch

    loop.fit(model, epochs=1, device="cpu", callbacks=[Veto()])
    assert torch.equal(model.weight, before)
    assert loop.global_step == 0
    assert all(p.grad is None for p in model.parameters())


def test_cancel_training_still_validates() -> None:
    events = _trace({(E.BATCH_END, 0, 0, True): tl.CancelTraining}, epochs=1)
    val = [E.BATCH_START, E.INFERENCE_PREDICTION_END, E.BATCH_END] * 2
    assert events == [E.FIT_START, E.EPOCH_START, E.TRAINING_START, E.BATCH_START,
                      E.UPDATE_START, E.BATCH_END, E.TRAINING_END,
                      E.VALIDATION_START, *val, E.VALIDATION_END, E.EPOCH_END, E.FIT_END]


def test_cancel_validation() -> None:
    events = _trace({(E.BATCH_START, 0, 0, False): tl.CancelValidation}, epochs=1)
    train = [E.BATCH_START, E.UPDATE_START, E.BATCH_END] * 3
    assert events == [E.FIT_START, E.EPOCH_START, E.TRAINING_START, *train, E.TRAINING_END,
                      E.VALIDATION_START, E.BATCH_START, E.VALIDATION_END, E.EPOCH_END,
                      E.FIT_END]


def test_cancel_epoch_skips_validation_and_continues() -> None:
    events = _trace({(E.BATCH_START, 0, 1, True): tl.CancelEpoch}, epochs=2)
    first = [E.EPOCH_START, E.TRAINING_START, E.BATCH_START, E.UPDATE_START, E.BATCH_END,
             E.BATCH_START, E.EPOCH_END]
    assert events == [E.FIT_START, *first, *_epoch(), E.FIT_END]


def test_cancel_fit_returns_history() -> None:
    loop, model = _loop([])

    def stop(loop: tl.TrainingLoop, event: Event) -> None:
        if event is E.EPOCH_END and loop.epoch_index == 1:
            raise tl.CancelFit

    history = loop.fit(model, epochs=5, device="cpu", callbacks=[stop])
    assert [r["epoch"] for r in history.epochs] == [1, 2]


def test_fit_end_fires_on_error_and_error_is_reraised() -> None:
    events: list = []

    def record(loop: tl.TrainingLoop, event: Event) -> None:
        events.append(event)
        if event is E.BATCH_END and loop.is_training and loop.batch_index == 1:
            raise KeyError("boom")

    loop, model = _loop([record])
    with pytest.raises(KeyError, match="boom") as info:
        loop.fit(model, epochs=1, device="cpu")
    assert events[-1] is E.FIT_END
    assert any("record" in note and "BATCH_END" in note for note in info.value.__notes__)


def test_stop_training_finishes_the_epoch() -> None:
    loop, model = _loop([])

    def stop(loop: tl.TrainingLoop, event: Event) -> None:
        if event is E.BATCH_END and loop.is_training and loop.batch_index == 0:
            loop.stop_training = True

    history = loop.fit(model, epochs=5, device="cpu", callbacks=[stop])
    assert len(history.epochs) == 1
    assert "validation/accuracy" in history.epochs[0]


def test_fit_callbacks_are_for_that_call_only() -> None:
    seen: list = []
    loop, model = _loop([])
    loop.fit(model, epochs=1, device="cpu", callbacks=[lambda lp, ev: seen.append(ev)])
    count = len(seen)
    loop.fit(model, epochs=1, device="cpu")
    assert count > 0 and len(seen) == count


def test_callback_class_methods_and_order() -> None:
    order: list = []

    class A(tl.Callback):
        def on_fit_start(self, loop: tl.TrainingLoop) -> None:
            order.append("A")

    class B(tl.Callback):
        def on_fit_start(self, loop: tl.TrainingLoop) -> None:
            order.append("B")

    loop, model = _loop([A(), B()])
    loop.fit(model, epochs=0, device="cpu")
    assert order == ["A", "B"]


def test_misspelled_callback_method_fails_loudly() -> None:
    class Typo(tl.Callback):
        def on_epoch_ends(self, loop: tl.TrainingLoop) -> None:
            pass

    loop, model = _loop([Typo()])
    with pytest.raises(TypeError, match="on_epoch_ends"):
        loop.fit(model, epochs=1, device="cpu")


def test_state_counters_during_fit() -> None:
    seen: list = []

    def record(loop: tl.TrainingLoop, event: Event) -> None:
        if event in (E.UPDATE_START, E.BATCH_END) and loop.is_training:
            seen.append((event, loop.epoch_index, loop.batch_index, loop.batch_count,
                         loop.global_step))

    loop, model = _loop([record])
    loop.fit(model, epochs=2, device="cpu")
    assert seen[:4] == [(E.UPDATE_START, 0, 0, 3, 0), (E.BATCH_END, 0, 0, 3, 1),
                        (E.UPDATE_START, 0, 1, 3, 1), (E.BATCH_END, 0, 1, 3, 2)]
    assert seen[-1] == (E.BATCH_END, 1, 2, 3, 6)


def test_last_values_are_readable_in_callbacks() -> None:
    seen: dict = {}

    class Peek(tl.Callback):
        def on_update_start(self, loop: tl.TrainingLoop) -> None:
            seen["grad"] = loop.model.weight.grad is not None

        def on_inference_prediction_end(self, loop: tl.TrainingLoop) -> None:
            seen["output"] = tuple(loop.last_output.shape)
            seen["loss_before"] = loop.last_loss

        def on_batch_end(self, loop: tl.TrainingLoop) -> None:
            seen["loss"] = loop.last_loss
            seen["stats"] = loop.last_stats

    loop, model = _loop([Peek()])
    loop.fit(model, epochs=1, device="cpu")
    assert seen["grad"] is True
    assert seen["output"] == (4, 3)
    assert seen["loss_before"] is None
    assert isinstance(seen["loss"], torch.Tensor) and seen["loss"].requires_grad is False
    assert set(seen["stats"]) == {"loss", "accuracy"}
    assert all(isinstance(v, float) for v in seen["stats"].values())


def test_cancel_batch_at_batch_end_ends_only_that_handler_list() -> None:
    # SPEC §2: a Cancel* raised at an *_END event ends the remaining handlers of that event and
    # nothing else (S4TF let CancelBatch at BATCH_END escape the fit).
    after: list = []

    def later(loop: tl.TrainingLoop, event: Event) -> None:
        if event is E.BATCH_END:
            after.append((loop.epoch_index, loop.batch_index, loop.is_training))

    events: list = []

    def cancel(loop: tl.TrainingLoop, event: Event) -> None:
        events.append(event)
        if event is E.BATCH_END and loop.is_training and loop.batch_index == 1:
            raise tl.CancelBatch

    loop, model = _loop([cancel, later])
    history = loop.fit(model, epochs=2, device="cpu")
    assert events == [E.FIT_START, *_epoch(), *_epoch(), E.FIT_END]
    assert len(history.epochs) == 2 and loop.global_step == 6
    assert (0, 1, True) not in after and (1, 1, True) not in after  # the rest of that list
    assert (0, 2, True) in after and (0, 0, False) in after  # ...and nothing else


@pytest.mark.parametrize(("event", "error"), [
    (E.TRAINING_END, tl.CancelTraining), (E.VALIDATION_END, tl.CancelValidation),
    (E.EPOCH_END, tl.CancelEpoch), (E.FIT_END, tl.CancelFit), (E.EPOCH_END, tl.CancelBatch)])
def test_cancel_at_its_own_end_event_changes_nothing_else(event: Event, error: type) -> None:
    events = _trace({(event, 0, None, event is E.TRAINING_END): error}
                    if event is not E.FIT_END else {(event, 1, None, False): error})
    assert events == [E.FIT_START, *_epoch(), *_epoch(), E.FIT_END]


def test_cancel_fit_at_epoch_end_still_ends_the_fit() -> None:
    events = _trace({(E.EPOCH_END, 0, None, False): tl.CancelFit})
    assert events == [E.FIT_START, *_epoch(), E.FIT_END]


def test_update_start_sees_the_output_loss_and_gradients_of_the_batch() -> None:
    seen: list = []

    def inspect(loop: tl.TrainingLoop, event: Event) -> None:
        if event is E.UPDATE_START:
            assert loop.last_output is not None and loop.last_loss is not None
            by_hand = torch.nn.functional.cross_entropy(loop.last_output, loop.last_target)
            seen.append((loop.last_output.shape, float(loop.last_loss), float(by_hand.detach()),
                         loop.model.weight.grad is not None, loop.last_loss.requires_grad))

    loop, model = _loop([inspect])
    loop.fit(model, epochs=1, device="cpu")
    assert len(seen) == 3
    for shape, loss, by_hand, has_grad, requires_grad in seen:
        assert shape == (4, 3) and loss == pytest.approx(by_hand, rel=1e-6)
        assert has_grad and not requires_grad
