"""Epochs as streams: steps_per_epoch across passes, data without a length, validation_steps,
resuming mid-pass (skip, state_dict, replay), batches that are not pairs, tokens per second."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import classification_batches
from torch.utils.data import DataLoader, Dataset, TensorDataset

import trainingloop as tl
from trainingloop.stream import TrainingStream


class Recorded:
    """A re-iterable of numbered (x, y) batches that records set_epoch calls."""

    def __init__(self, count: int, length: bool = True) -> None:
        self.batches = [(torch.full((2, 5), float(i)), torch.tensor([i % 3, (i + 1) % 3]))
                        for i in range(count)]
        self.epochs: list[int] = []
        self.has_length = length

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.batches)

    def __len__(self) -> int:
        if not self.has_length:
            raise TypeError("no length")
        return len(self.batches)


def _ids(loop: tl.TrainingLoop, seen: list, event: tl.Event) -> None:
    if event is tl.Event.BATCH_START and loop.is_training:
        seen.append((loop.epoch_index, loop.batch_index, loop.batch_count,
                     int(loop.last_input[0, 0])))


def _loop(data: Any, validation: Any = None, callbacks: list | None = None) -> tuple:
    model = torch.nn.Linear(5, 3)
    loop = tl.TrainingLoop(data, validation, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                           callbacks=callbacks or [], include_default_callbacks=False)
    return loop, model


def test_steps_per_epoch_carries_the_iterator_across_epochs() -> None:
    data, seen = Recorded(5), []
    loop, model = _loop(data, callbacks=[lambda lp, ev: _ids(lp, seen, ev)])
    history = loop.fit(model, epochs=4, device="cpu", steps_per_epoch=3)
    assert [s[3] for s in seen] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert [(e, b, n) for e, b, n, _ in seen] == [(e, b, 3) for e in range(4) for b in range(3)]
    assert data.epochs == [0, 1, 2]  # set_epoch with the 0-based pass number, once per pass
    assert loop.global_step == 12 and len(history.epochs) == 4


def test_steps_per_epoch_reshuffles_an_array_dataset_each_pass() -> None:
    x = torch.arange(10.0).reshape(10, 1).expand(10, 5).contiguous()
    data = tl.data.ArrayDataset({"x": x, "y": torch.arange(10) % 3}).shuffle(seed=3).batch(4)
    seen: list = []
    loop, model = _loop(data, callbacks=[lambda lp, ev: _ids(lp, seen, ev)])
    loop.fit(model, epochs=3, device="cpu", steps_per_epoch=2)
    firsts = [s[3] for s in seen]
    expected = [int(data.order(p)[b * 4]) for p, b in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                       (1, 2))]
    assert firsts == expected
    assert data.order(0).tolist() != data.order(1).tolist()


def test_data_without_a_length_needs_steps_per_epoch() -> None:
    def endless() -> Iterator[Any]:
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.randn(4, 5, generator=g), torch.randint(0, 3, (4,), generator=g)

    loop, model = _loop(endless())
    with pytest.raises(ValueError, match="steps_per_epoch"):
        loop.fit(model, epochs=1, device="cpu")
    history = loop.fit(model, epochs=3, device="cpu", steps_per_epoch=5)
    assert loop.global_step == 15 and loop.batch_count == 5 and len(history.epochs) == 3
    no_length = Recorded(4, length=False)
    loop, model = _loop(no_length)
    with pytest.raises(ValueError, match="no length"):
        loop.fit(model, epochs=1, device="cpu")


def test_a_spent_one_shot_iterator_stops_the_fit_with_a_warning() -> None:
    loop, model = _loop(iter(classification_batches(5)))
    with pytest.warns(RuntimeWarning, match="ran out of batches in epoch 2"):
        history = loop.fit(model, epochs=4, device="cpu", steps_per_epoch=3)
    assert loop.global_step == 5 and len(history.epochs) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps_per_epoch": 0}, "steps_per_epoch must be an integer >= 1 or None, got 0"),
    ({"steps_per_epoch": -2}, "got -2"), ({"validation_steps": 0}, "validation_steps"),
    ({"steps_per_epoch": 1.5}, "got 1.5")])
def test_bad_step_counts(kwargs: dict, message: str) -> None:
    loop, model = _loop(classification_batches(3))
    with pytest.raises(ValueError, match=message):
        loop.fit(model, epochs=1, device="cpu", **kwargs)


def test_validation_steps_limit_each_validation() -> None:
    seen: list = []

    def count(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_END and not loop.is_training:
            seen.append((loop.epoch_index, loop.batch_index, loop.batch_count))

    validation = classification_batches(6, seed=1)
    loop, model = _loop(classification_batches(3), validation, callbacks=[count])
    history = loop.fit(model, epochs=2, device="cpu", validation_steps=2)
    assert seen == [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]
    reference = tl.TrainingLoop(validation[:2], optimizer=lambda lp: None,
                                loss=torch.nn.functional.cross_entropy, metrics=["accuracy"],
                                include_default_callbacks=False)
    assert history["validation/loss"][-1] == pytest.approx(
        reference.evaluate(model, validation[:2], device="cpu")["loss"])


class Counting(Dataset):
    """A map-style data set that counts the examples it loads."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)
        self.loaded = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loaded += 1
        return self.x[i], self.y[i]


class Opaque:
    """A re-iterable the loop knows nothing about: resuming it must replay."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _resumable(directory: Path, kind: str, crash_at: int | None, resume: bool,
               steps_per_epoch: int | None) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(0)
    dataset = Counting(60)
    if kind == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        data: Any = StatefulDataLoader(dataset, batch_size=6, shuffle=True)
    elif kind == "loader":
        data = DataLoader(dataset, batch_size=6, shuffle=True,
                          generator=torch.Generator().manual_seed(5))
    else:  # the global RNG: a generator inside a wrapper is out of the loop's sight
        data = Opaque(DataLoader(dataset, batch_size=6, shuffle=True))
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.2),
                                torch.nn.Linear(8, 3))

    def crash(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_END and loop.global_step == crash_at:
            raise RuntimeError("crash")

    loop = tl.TrainingLoop(data, classification_batches(2, seed=3),
                           optimizer=torch.optim.Adam(model.parameters(), lr=0.01),
                           loss=torch.nn.functional.cross_entropy,
                           callbacks=[tl.Checkpoint(directory, every_n_steps=4), crash],
                           include_default_callbacks=False)
    if crash_at is None:
        loop.fit(model, epochs=4, device="cpu", resume=resume or None,
                 steps_per_epoch=steps_per_epoch)
    else:
        with pytest.raises(RuntimeError, match="crash"):
            loop.fit(model, epochs=4, device="cpu", steps_per_epoch=steps_per_epoch)
    return model, dataset


@pytest.mark.parametrize("kind", ["loader", "stateful", "opaque"])
@pytest.mark.parametrize("steps_per_epoch", [None, 7])
def test_resume_mid_pass_is_exact_and_skips_without_loading(
        tmp_path: Path, kind: str, steps_per_epoch: int | None) -> None:
    expected, _ = _resumable(tmp_path / "a", kind, None, False, steps_per_epoch)
    # steps 1-10 per pass of 10 batches; the checkpoint at step 16 is batch 6 of pass 2 (and,
    # with 7 steps per epoch, batch 2 of epoch 3)
    _resumable(tmp_path / "b", kind, 18, False, steps_per_epoch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed, dataset = _resumable(tmp_path / "b", kind, None, True, steps_per_epoch)
    for (name, a), b in zip(expected.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    replayed = [w for w in caught if "replaying" in str(w.message)]
    total = 4 * (steps_per_epoch or 10) * 6 - 16 * 6  # examples trained after the checkpoint
    if kind == "opaque":
        assert replayed and dataset.loaded == total + 6 * 6  # the 6 batches of pass 2 again
    else:
        assert not replayed and dataset.loaded == total  # nothing before the position loaded


def test_resume_from_an_epoch_end_mid_pass(tmp_path: Path) -> None:
    # With steps_per_epoch an epoch's end is in the middle of a pass: the stream must go on
    # from there, not restart the pass.
    def run(directory: Path, epochs: int, resume: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        data = tl.data.ArrayDataset({"x": torch.randn(40, 5, generator=torch.Generator()
                                                      .manual_seed(2)),
                                     "y": torch.arange(40) % 3}).shuffle(seed=1).batch(6)
        loop, model = _loop(data, callbacks=[tl.Checkpoint(directory)])
        loop.fit(model, epochs=epochs, device="cpu", steps_per_epoch=4,
                 resume=resume or None)
        return model

    expected = run(tmp_path / "a", 5, False).state_dict()
    run(tmp_path / "b", 2, False)  # 8 of the 7 batches of pass 0: one batch into pass 1
    resumed = run(tmp_path / "b", 5, True).state_dict()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name


def test_a_one_shot_iterator_cannot_resume_mid_pass(tmp_path: Path) -> None:
    stream = TrainingStream(iter(classification_batches(4)), steps_per_epoch=2)
    stream.load_state_dict({"pass": 0, "drawn": 2, "pass_rng": None}, data_restored=False)
    with pytest.raises(ValueError, match="one-shot iterator"):
        next(iter(stream.epoch(1)))


def test_dict_and_triple_batches_train_with_a_custom_step() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 20, (4, 6), generator=g),
                "attention_mask": torch.ones(4, 6, dtype=torch.long),
                "labels": torch.randint(0, 3, (4,), generator=g)} for _ in range(3)]
    embed, head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 3)
    model = torch.nn.ModuleDict({"embed": embed, "head": head})
    seen: list = []

    def step(loop: tl.TrainingLoop, model: torch.nn.Module) -> torch.Tensor:
        batch = loop.last_input
        mask = batch["attention_mask"].unsqueeze(-1)
        pooled = (model["embed"](batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        loop.last_output = model["head"](pooled)
        seen.append((type(batch), loop.last_target is batch["labels"]))
        return torch.nn.functional.cross_entropy(loop.last_output, batch["labels"])

    loop = tl.TrainingLoop(batches, batches, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           metrics=["accuracy"], include_default_callbacks=False)
    history = loop.fit(model, epochs=2, device="cpu", step=step)
    assert seen and all(kind is dict and same for kind, same in seen)
    by_hand = []
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"].unsqueeze(-1)
            logits = head((embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1))
            by_hand.append((logits.argmax(1) == batch["labels"]).float().mean())
    assert history["validation/accuracy"][-1] == pytest.approx(float(torch.stack(by_hand).mean()))
    # 4 sequences of 6 token ids per batch
    assert history.epochs[-1]["tokens_per_second"] == pytest.approx(
        history.epochs[-1]["examples_per_second"] * 6)

    triples = [(x, y, torch.ones(4)) for x, y in classification_batches(2)]
    linear = torch.nn.Linear(5, 3)

    def weighted(loop: tl.TrainingLoop, model: torch.nn.Module) -> torch.Tensor:
        x, y, w = loop.last_input
        loop.last_output = model(x)
        return (torch.nn.functional.cross_entropy(loop.last_output, y, reduction="none") * w).mean()

    loop = tl.TrainingLoop(triples, optimizer=torch.optim.SGD(linear.parameters(), lr=0.1),
                           include_default_callbacks=False)
    history = loop.fit(linear, epochs=1, device="cpu", step=weighted)
    assert loop.last_target is None and loop.global_step == 2
    assert history["train/loss"][0] > 0
    with pytest.raises(tl.BatchError, match="custom step"):
        tl.TrainingLoop(triples, optimizer=torch.optim.SGD(linear.parameters(), lr=0.1),
                        loss=torch.nn.functional.cross_entropy,
                        include_default_callbacks=False).fit(linear, epochs=1, device="cpu")


def test_tokens_per_second_only_for_token_inputs() -> None:
    tokens = [(torch.randint(0, 10, (3, 8)), torch.randint(0, 10, (3, 8))) for _ in range(2)]
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    loop = tl.TrainingLoop(tokens, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           loss=lambda out, y: torch.nn.functional.cross_entropy(
                               out.reshape(-1, 10), y.reshape(-1)),
                           include_default_callbacks=False)
    record = loop.fit(model, epochs=1, device="cpu").epochs[0]
    assert record["tokens_per_second"] == pytest.approx(record["examples_per_second"] * 8)
    loop, model = _loop(classification_batches(2))
    assert "tokens_per_second" not in loop.fit(model, epochs=1, device="cpu").epochs[0]


def test_every_n_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainingloop.callbacks import checkpoint as module

    clock = [0.0]
    monkeypatch.setattr(module, "_clock", lambda: clock[0])

    def tick(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.BATCH_START and loop.is_training:
            clock[0] += 25.0  # 25 s a batch: a save every third update with 1 minute

    loop, model = _loop(TensorDataLoader(), callbacks=[tick, tl.Checkpoint(
        tmp_path, every_n_epochs=0, every_n_minutes=1, keep_last=10)])
    loop.fit(model, epochs=1, device="cpu")
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("epoch="))
    assert names == ["epoch=0001-step=0000003", "epoch=0001-step=0000006"]
    with pytest.raises(ValueError, match="every_n_minutes"):
        tl.Checkpoint(tmp_path, every_n_minutes=0)


def TensorDataLoader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(28, 5, generator=g),
                                    torch.randint(0, 3, (28,), generator=g)), batch_size=4)


def test_crash_mid_stream_resumes_bit_for_bit(tmp_path: Path) -> None:
    # nanoGPT's shape: endless random windows for training and validation, epochs of
    # steps_per_epoch; the resumed fit trains and validates on the same windows.
    tokens = torch.randint(0, 17, (2000,), generator=torch.Generator().manual_seed(3))

    def run(directory: Path, crash_at: int | None, resume: bool) -> tuple[dict, tl.History]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Embedding(17, 8), torch.nn.Dropout(0.1),
                                    torch.nn.Linear(8, 17))

        def crash(loop: tl.TrainingLoop, event: tl.Event) -> None:
            if event is tl.Event.BATCH_END and loop.global_step == crash_at:
                raise RuntimeError("crash")

        loop = tl.TrainingLoop(
            tl.data.TokenDataset.random(tokens, 16, 4, seed=1),
            tl.data.TokenDataset.random(tokens, 16, 4, seed=2),
            optimizer=torch.optim.AdamW(model.parameters(), lr=0.01),
            loss=lambda out, y: torch.nn.functional.cross_entropy(out.reshape(-1, 17),
                                                                  y.reshape(-1)),
            callbacks=[tl.Checkpoint(directory, every_n_steps=3), crash],
            include_default_callbacks=False)
        if crash_at is not None:
            with pytest.raises(RuntimeError, match="crash"):
                loop.fit(model, epochs=4, device="cpu", steps_per_epoch=5, validation_steps=2)
        history = loop.fit(model, epochs=4, device="cpu", steps_per_epoch=5, validation_steps=2,
                           resume=True) if resume else (
            loop.fit(model, epochs=4, device="cpu", steps_per_epoch=5, validation_steps=2)
            if crash_at is None else loop.history)
        return model.state_dict(), history

    expected, reference = run(tmp_path / "a", None, False)
    run(tmp_path / "b", 8, False)  # the checkpoint at step 6: epoch 2, batch 1
    resumed, history = run(tmp_path / "b", None, True)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert history["validation/loss"] == reference["validation/loss"]
    assert history["train/loss"] == reference["train/loss"]
