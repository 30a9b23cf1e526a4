"""Schedules against their formulas, every step of T=50."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import classification_batches

import trainingloop as tl
from trainingloop.schedules import one_cycle, warmup_cosine, warmup_linear

T = 50
PEAK = 0.4


def test_spec_worked_example_every_step() -> None:
    schedule = tl.make_schedule([
        tl.ScheduleSegment(shape=tl.shapes.linear, start_rate=0.0, end_rate=PEAK, step_count=10),
        tl.ScheduleSegment(shape=tl.shapes.linear, end_rate=0.0),
    ])(T)
    for k in range(T):
        expected = PEAK * k / 9 if k <= 9 else PEAK * (1 - (k - 9) / (T - 1 - 9))
        assert schedule(k) == pytest.approx(expected, abs=1e-12), k


def test_cosine_and_exponential_shapes_every_step() -> None:
    schedule = tl.make_schedule([
        tl.ScheduleSegment(tl.shapes.cosine, 1.0, 0.5, step_count=21),
        tl.ScheduleSegment(tl.shapes.exponential, end_rate=0.005),
    ])(T)
    for k in range(T):
        if k <= 20:
            expected = 1.0 - 0.5 * (1 - math.cos(math.pi * k / 20)) / 2
        else:
            expected = 0.5 * (0.005 / 0.5) ** ((k - 20) / (T - 1 - 20))
        assert schedule(k) == pytest.approx(expected, rel=1e-12), k


def test_any_callable_shape_is_normalised() -> None:
    schedule = tl.make_schedule([tl.ScheduleSegment(lambda x: 3 - x * x, 2.0, 1.0)])(T)
    for k in range(T):
        x = k / (T - 1)
        assert schedule(k) == pytest.approx(2.0 - (x * x)), k


def test_three_segments_share_boundaries() -> None:
    schedule = tl.make_schedule([
        tl.ScheduleSegment(tl.shapes.linear, 0.0, 1.0, step_count=5),
        tl.ScheduleSegment(tl.shapes.linear, end_rate=1.0, step_count=11),
        tl.ScheduleSegment(tl.shapes.linear, end_rate=0.0),
    ])(T)
    assert [schedule(k) for k in (0, 4, 10, 14)] == [0.0, 1.0, 1.0, 1.0]
    assert schedule(T - 1) == 0.0 and schedule(32) == pytest.approx(1 - 18 / 35)


def test_invalid_schedules() -> None:
    with pytest.raises(ValueError, match="only the last"):
        tl.make_schedule([tl.ScheduleSegment(start_rate=1.0), tl.ScheduleSegment()])
    with pytest.raises(ValueError, match="start_rate"):
        tl.make_schedule([tl.ScheduleSegment(end_rate=1.0)])
    with pytest.raises(ValueError, match=r"f\(0\) == f\(1\)"):
        tl.make_schedule([tl.ScheduleSegment(lambda x: 1.0, 1.0, 0.0)])


def test_recipes() -> None:
    lin = warmup_linear(1.0, 11)(T)
    assert [lin(0), lin(5), lin(10), lin(T - 1)] == [0.0, 0.5, 1.0, 0.0]
    cos = warmup_cosine(1.0, 11)(T)
    assert cos(10) == 1.0 and cos(T - 1) == pytest.approx(0.0, abs=1e-12)
    assert cos(30) == pytest.approx((1 + math.cos(math.pi * 20 / 39)) / 2)
    cycle = one_cycle(1.0, pct_start=0.25)(T)
    rates = [cycle(k) for k in range(T)]
    assert rates[0] == pytest.approx(1.0 / 25) and max(rates) == 1.0
    assert rates.index(1.0) == round(T * 0.25) - 1 and rates[-1] == pytest.approx(1.0 / 25 / 1e5)


def _fit_with(callback: tl.Callback, optimizer_factory, batches: int = 10,
              epochs: int = 5, accumulate: int = 1) -> list[float]:
    model = torch.nn.Linear(5, 3)
    optimizer = optimizer_factory(model.parameters())
    rates: list[float] = []

    def record(loop: tl.TrainingLoop, event: tl.Event) -> None:
        if event is tl.Event.UPDATE_START:
            rates.append(loop.optimizer.param_groups[0]["lr"])

    loop = tl.TrainingLoop(classification_batches(batches), optimizer=optimizer,
                           loss=torch.nn.functional.cross_entropy,
                           include_default_callbacks=False, callbacks=[callback, record])
    loop.fit(model, epochs=epochs, device="cpu", accumulate_grad_batches=accumulate)
    return rates


def test_scheduler_sets_every_step_of_a_fit() -> None:
    schedule = tl.make_schedule([
        tl.ScheduleSegment(tl.shapes.linear, 0.0, PEAK, step_count=10),
        tl.ScheduleSegment(tl.shapes.linear, end_rate=0.0)])
    rates = _fit_with(tl.LearningRateScheduler(schedule),
                      lambda p: torch.optim.SGD(p, lr=1.0))
    assert len(rates) == T
    assert rates == pytest.approx([schedule(T)(k) for k in range(T)])


def test_scheduler_counts_updates_with_accumulation() -> None:
    schedule = tl.make_schedule([tl.ScheduleSegment(tl.shapes.linear, 1.0, 0.0)])
    rates = _fit_with(tl.LearningRateScheduler(schedule), lambda p: torch.optim.SGD(p, lr=1.0),
                      batches=10, epochs=2, accumulate=4)  # 3 updates per epoch
    assert rates == pytest.approx([1 - k / 5 for k in range(6)])


def test_bias_correction_is_adams_factor() -> None:
    schedule = tl.make_schedule([tl.ScheduleSegment(tl.shapes.linear, 0.1, 0.1 + 1e-9)])
    rates = _fit_with(tl.LearningRateScheduler(schedule, bias_correction=(0.9, 0.999)),
                      lambda p: torch.optim.Adam(p, lr=1.0), epochs=1)
    for k, rate in enumerate(rates):
        t = k + 1
        expected = schedule(10)(k) * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        assert rate == pytest.approx(expected) and rate > 0


def test_torch_scheduler_is_stepped_after_each_update() -> None:
    holder = {}

    def make(params):
        holder["opt"] = torch.optim.SGD(params, lr=1.0)
        holder["sched"] = torch.optim.lr_scheduler.StepLR(holder["opt"], step_size=3, gamma=0.5)
        return holder["opt"]

    model = torch.nn.Linear(5, 3)
    optimizer = make(model.parameters())
    rates: list[float] = []
    loop = tl.TrainingLoop(classification_batches(4), optimizer=optimizer,
                           loss=torch.nn.functional.cross_entropy, include_default_callbacks=False,
                           callbacks=[tl.LearningRateScheduler(holder["sched"]),
                                      lambda lp, ev: rates.append(lp.learning_rate)
                                      if ev is tl.Event.UPDATE_START else None])
    loop.fit(model, epochs=2, device="cpu")
    assert rates == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_the_shared_step_takes_the_earlier_segments_value() -> None:
    # S4TF: "For the step that connects the neighbor segments, always return the value at the
    # previous segment"; a jump's second rate only anchors the later steps.
    schedule = tl.make_schedule([
        tl.ScheduleSegment(tl.shapes.linear, 0.0, 1.0, step_count=5),
        tl.ScheduleSegment(tl.shapes.linear, 0.5, 0.1),
    ])(9)
    assert [schedule(k) for k in range(5)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert schedule(5) == pytest.approx(0.5 + (0.1 - 0.5) * 1 / 4)
    assert schedule(6) == pytest.approx(0.5 + (0.1 - 0.5) * 2 / 4)
    assert schedule(8) == pytest.approx(0.1)
    assert schedule(20) == pytest.approx(0.1)  # past the end: the last segment's end rate
