"""Metric values against scikit-learn and hand computation, over several uneven batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchmetrics
from sklearn.metrics import accuracy_score, matthews_corrcoef, top_k_accuracy_score

import trainingloop as tl
from trainingloop.metrics import (
    Accuracy,
    Loss,
    MatthewsCorrelation,
    MetricTrace,
    Perplexity,
    TopKAccuracy,
    TorchMetric,
    batch_size,
    resolve_metrics,
)

SIZES = (7, 7, 3)  # a short last batch


def _feed(metric: tl.metrics.Metric, logits: torch.Tensor, target: torch.Tensor) -> float:
    metric.reset()
    start = 0
    for size in SIZES:
        out, y = logits[start:start + size], target[start:start + size]
        loss = torch.nn.functional.cross_entropy(out, y) if out.dim() == 2 and out.shape[1] > 1 \
            else torch.tensor(0.0)
        metric.update(loss, out, y)
        start += size
    return metric.compute()


@pytest.fixture
def multiclass() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(sum(SIZES), 6, generator=g), torch.randint(0, 6, (sum(SIZES),), generator=g)


def test_loss_is_example_weighted_mean() -> None:
    metric = Loss()
    metric.update(torch.tensor(1.0), None, torch.zeros(4))
    metric.update(torch.tensor(4.0), None, torch.zeros(1))
    assert metric.compute() == pytest.approx((4 * 1.0 + 1 * 4.0) / 5)


def test_loss_equals_full_batch_cross_entropy(multiclass: tuple) -> None:
    logits, target = multiclass
    expected = torch.nn.functional.cross_entropy(logits, target).item()
    assert _feed(Loss(), logits, target) == pytest.approx(expected, rel=1e-6)


def test_accuracy_matches_sklearn(multiclass: tuple) -> None:
    logits, target = multiclass
    expected = accuracy_score(target.numpy(), logits.argmax(1).numpy())
    assert _feed(Accuracy(), logits, target) == pytest.approx(expected)


def test_accuracy_one_logit_binary_thresholds_at_zero() -> None:
    metric = Accuracy()
    metric.update(torch.tensor(0.0), torch.tensor([[2.0], [-1.0], [0.5], [-3.0]]),
                  torch.tensor([1, 0, 0, 0]))
    assert metric.compute() == 0.75


def test_accuracy_with_one_hot_targets() -> None:
    metric = Accuracy()
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    metric.update(torch.tensor(0.0), out, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert metric.compute() == 0.5


def test_top5_matches_sklearn(multiclass: tuple) -> None:
    logits, target = multiclass
    expected = top_k_accuracy_score(target.numpy(), logits.numpy(), k=5, labels=range(6))
    assert _feed(TopKAccuracy(5), logits, target) == pytest.approx(expected)
    assert resolve_metrics(["top5_accuracy"])[1].name == "top5_accuracy"
    assert resolve_metrics(["top3_accuracy"])[1].k == 3


def test_mcc_multiclass_matches_sklearn(multiclass: tuple) -> None:
    logits, target = multiclass
    expected = matthews_corrcoef(target.numpy(), logits.argmax(1).numpy())
    assert _feed(MatthewsCorrelation(), logits, target) == pytest.approx(expected, abs=1e-12)


def test_mcc_binary_one_logit_matches_sklearn() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(sum(SIZES), 1, generator=g)
    target = torch.randint(0, 2, (sum(SIZES),), generator=g)
    expected = matthews_corrcoef(target.numpy(), (logits[:, 0] > 0).long().numpy())
    assert _feed(MatthewsCorrelation(), logits, target) == pytest.approx(expected, abs=1e-12)


def test_mcc_two_logits_and_degenerate_case() -> None:
    metric = MatthewsCorrelation()
    metric.update(torch.tensor(0.0), torch.tensor([[1.0, 0.0]] * 4), torch.tensor([0, 1, 0, 1]))
    assert metric.compute() == matthews_corrcoef([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0


def test_perplexity_is_exp_of_token_mean_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(sum(SIZES), 5, 11, generator=g)  # (batch, time, vocab)
    target = torch.randint(0, 11, (sum(SIZES), 5), generator=g)
    probs = torch.softmax(logits.double(), -1)
    nll = -torch.log(probs.gather(-1, target.unsqueeze(-1))).mean().item()
    metric = Perplexity()
    start = 0
    for size in SIZES:
        metric.update(torch.tensor(0.0), logits[start:start + size], target[start:start + size])
        start += size
    assert metric.compute() == pytest.approx(math.exp(nll), rel=1e-5)


def test_torchmetrics_object_is_accepted_and_named(multiclass: tuple) -> None:
    logits, target = multiclass
    metric = resolve_metrics([torchmetrics.classification.MulticlassF1Score(num_classes=6)])[1]
    assert metric.name == "multiclass_f1_score"
    from sklearn.metrics import f1_score

    expected = f1_score(target.numpy(), logits.argmax(1).numpy(), average="macro",
                        labels=np.arange(6))
    assert _feed(metric, logits, target) == pytest.approx(expected, abs=1e-6)


def test_loss_is_first_and_unknown_names_fail() -> None:
    names = [m.name for m in resolve_metrics(["accuracy", "loss", "mcc"])]
    assert names == ["loss", "accuracy", "mcc"]
    with pytest.raises(ValueError, match="'acuracy'"):
        resolve_metrics(["acuracy"])
    with pytest.raises(ValueError, match="repeated"):
        resolve_metrics(["accuracy", "accuracy"])


def test_update_does_not_read_the_device(multiclass: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    logits, target = multiclass
    reads: list = []
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append(1) or 0)
    monkeypatch.setattr(torch.Tensor, "__float__", lambda self: reads.append(1) or 0.0)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or [])
    for metric in (Loss(), Accuracy(), TopKAccuracy(5), MatthewsCorrelation(), Perplexity()):
        metric.update(torch.tensor(1.0), logits, target)
    assert reads == []


# -- found by mutation testing (`make mutate`): edges the tests above did not pin down --------
def test_batch_size_of_nested_batches() -> None:
    assert batch_size(torch.zeros(6, 2)) == 6
    assert batch_size(torch.tensor(3.0)) == 1  # a 0-d tensor is one example
    assert batch_size({"ids": torch.zeros(5, 7), "mask": torch.zeros(9)}) == 5
    assert batch_size([torch.zeros(0, 3), (torch.zeros(4),)]) == 4  # empty first: the next
    assert batch_size(["text", 3]) == 0
    assert batch_size(None) == 0


def test_loss_weights_by_output_without_target_and_is_nan_before_any_batch() -> None:
    metric = Loss()
    assert math.isnan(metric.compute()) and metric.value_tensor() is None
    metric.update(torch.tensor(2.0), torch.zeros(3, 2), None)  # no target: the output's 3
    metric.update(torch.tensor(6.0), None, None)  # nothing to count: weight 1
    assert metric.count == 4
    assert metric.compute() == pytest.approx((3 * 2.0 + 1 * 6.0) / 4)
    metric.reset()
    assert metric.sums is None and metric.count == 0.0 and math.isnan(metric.compute())
    # an empty phase divides by 1, not 0
    assert Loss().value(torch.tensor([0.0]), 0.0).item() == 0.0
    assert Accuracy().value(torch.tensor([0.0]), 0.0).item() == 0.0
    assert TopKAccuracy(2).value(torch.tensor([0.0]), 0.0).item() == 0.0
    assert Perplexity().value(torch.tensor([0.0]), 0.0).item() == 1.0
    # one example divides by one
    assert Loss().value(torch.tensor([3.0]), 1.0).item() == 3.0
    assert Accuracy().value(torch.tensor([1.0]), 1.0).item() == 1.0
    assert TopKAccuracy(2).value(torch.tensor([1.0]), 1.0).item() == 1.0
    assert Perplexity().value(torch.tensor([2.0]), 1.0).item() == pytest.approx(math.exp(2.0))


def test_accuracy_counts_and_rejects_shapes_that_do_not_match() -> None:
    metric = Accuracy()
    metric.update(torch.tensor(0.0), torch.tensor([[0.2, 0.1], [0.3, 0.9], [0.6, 0.4]]),
                  torch.tensor([0, 0, 0]))
    assert (metric.sums.tolist(), metric.count) == ([2.0], 3)  # type: ignore[union-attr]
    metric.update(torch.tensor(0.0), torch.tensor([1.0, -1.0]), torch.tensor([1.0, 1.0]))
    assert (metric.sums.tolist(), metric.count) == ([3.0], 5)  # type: ignore[union-attr]
    assert metric.compute() == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match=r"output of shape \(4,\) to target of shape \(3,\)"):
        metric.update(torch.tensor(0.0), torch.zeros(4), torch.zeros(3))


def test_top_k_for_each_k_and_caps_k_at_the_classes() -> None:
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06], [0.2, 0.3, 0.5], [0.3, 0.2, 0.5]])
    target = torch.tensor([2, 1, 0, 2])
    for k in (1, 2):  # sklearn warns for k >= classes; 10 below
        metric = TopKAccuracy(k)
        metric.update(torch.tensor(0.0), logits, target)
        expected = top_k_accuracy_score(target.numpy(), logits.numpy(), k=k, labels=range(3))
        assert metric.compute() == pytest.approx(expected), k
    metric = TopKAccuracy(10)  # more than the 3 classes: every target is in the top 10
    metric.update(torch.tensor(0.0), logits, target)
    assert metric.compute() == 1.0 and metric.count == 4
    with pytest.raises(ValueError, match="k >= 1, got 0"):
        TopKAccuracy(0)


def test_mcc_by_hand_and_a_change_of_classes_fails() -> None:
    # binary: tp=2, tn=1, fp=1, fn=1 -> (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    metric = MatthewsCorrelation()
    metric.update(torch.tensor(0.0), torch.tensor([[1.0], [2.0], [-1.0], [3.0], [-2.0]]),
                  torch.tensor([1, 1, 1, 0, 0]))
    assert metric.compute() == pytest.approx(1 / 6, abs=1e-12)
    assert metric.sums.tolist() == [1.0, 1.0, 1.0, 2.0]  # type: ignore[union-attr]
    assert metric.compute() == pytest.approx(
        matthews_corrcoef([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]), abs=1e-12)
    perfect = MatthewsCorrelation()
    perfect.update(torch.tensor(0.0), torch.eye(3) * 5, torch.tensor([0, 1, 2]))
    assert perfect.compute() == 1.0 and perfect.count == 3
    inverse = MatthewsCorrelation()
    inverse.update(torch.tensor(0.0), torch.tensor([[-1.0], [1.0]]), torch.tensor([1, 0]))
    assert inverse.compute() == -1.0
    with pytest.raises(ValueError, match="number of classes changed.*now 4"):
        perfect.update(torch.tensor(0.0), torch.zeros(2, 4), torch.tensor([0, 3]))


def test_metric_trace_reads_the_running_values_in_bulk(multiclass: tuple) -> None:
    logits, target = multiclass
    metrics = [Loss(), Accuracy(), MatthewsCorrelation()]
    trace, expected = MetricTrace(), []
    assert trace.read() == [] and len(trace) == 0
    start = 0
    for step, size in enumerate(SIZES):
        out, y = logits[start:start + size], target[start:start + size]
        loss = torch.nn.functional.cross_entropy(out, y)
        for metric in metrics:
            metric.update(loss, out, y)
        trace.record(metrics, ("train", step))
        expected.append((("train", step), [m.compute() for m in metrics]))
        start += size
    assert len(trace) == 3
    rows = trace.read()
    assert [tag for tag, _ in rows] == [tag for tag, _ in expected]
    for (_, values), (_, reference) in zip(rows, expected):
        assert values == pytest.approx(reference, abs=1e-12)
    assert rows[-1][1][1] == pytest.approx(accuracy_score(target.numpy(),
                                                          logits.argmax(1).numpy()))
    assert trace.read() == [] and len(trace) == 0  # a read empties the trace


def test_metric_trace_with_a_torchmetric_and_an_empty_metric(multiclass: tuple) -> None:
    logits, target = multiclass
    f1 = TorchMetric(torchmetrics.classification.MulticlassF1Score(num_classes=6))
    accuracy, empty = Accuracy(), Loss()
    trace = MetricTrace()
    trace.record([f1, accuracy, empty], "before")  # nothing yet: NaN for all three
    f1.update(torch.tensor(0.0), logits, target)
    accuracy.update(torch.tensor(0.0), logits, target)
    trace.record([f1, accuracy, empty], "after")
    (tag0, before), (tag1, after) = trace.read()
    assert (tag0, tag1) == ("before", "after")
    assert all(math.isnan(v) for v in before)
    from sklearn.metrics import f1_score

    assert after[0] == pytest.approx(f1_score(target.numpy(), logits.argmax(1).numpy(),
                                              average="macro", labels=np.arange(6)), abs=1e-6)
    assert after[1] == pytest.approx(accuracy_score(target.numpy(), logits.argmax(1).numpy()))
    assert math.isnan(after[2])


def test_torch_metric_adapter_resets_and_names() -> None:
    class Plain:  # a torchmetrics-like object whose compute returns a float
        device = torch.device("cpu")
        name = "plain"

        def __init__(self) -> None:
            self.total = 0.0

        def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
            self.total += float(output.sum())

        def compute(self) -> float:
            return self.total

        def reset(self) -> None:
            self.total = 0.0

    metric = resolve_metrics([Plain()])[1]
    assert isinstance(metric, TorchMetric) and metric.name == "plain"
    assert math.isnan(metric.compute())
    metric.update(torch.tensor(0.0), torch.tensor([1.5, 2.0]), torch.zeros(2))
    assert metric.compute() == 3.5 and isinstance(metric.value_tensor(), torch.Tensor)
    metric.reset()
    assert math.isnan(metric.compute()) and metric.metric.total == 0.0
    named = TorchMetric(torchmetrics.classification.BinaryAUROC())
    assert named.name == "binary_auroc"
    assert TorchMetric(torchmetrics.MeanSquaredError()).name == "mean_squared_error"


def test_resolve_metrics_single_items_and_errors() -> None:
    assert [m.name for m in resolve_metrics("mcc")] == ["loss", "mcc"]
    accuracy = Accuracy()
    resolved = resolve_metrics(accuracy)
    assert len(resolved) == 2 and isinstance(resolved[0], Loss) and resolved[1] is accuracy
    own = Loss()
    assert resolve_metrics([own, "accuracy"])[0] is own
    assert [m.name for m in resolve_metrics(["TOP2_Accuracy", "Perplexity"])] == [
        "loss", "top2_accuracy", "perplexity"]
    assert [m.name for m in resolve_metrics([])] == ["loss"]
    with pytest.raises(TypeError, match="neither a metric name"):
        resolve_metrics([3])

    class Named(Accuracy):
        name = "loss"

    with pytest.raises(ValueError, match=r"repeated: \['loss'\]"):
        resolve_metrics([Named()])
    with pytest.raises(ValueError, match="known names: \\['accuracy', 'loss', 'mcc', "
                                         "'perplexity', 'top5_accuracy'\\] or 'top<k>_accuracy'"):
        resolve_metrics(["top_accuracy"])


def test_classification_metrics_over_a_time_axis_match_sklearn() -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(6, 5, 4, generator=g)  # (batch, time, classes): a language model's
    target = torch.randint(0, 4, (6, 5), generator=g)
    flat_target, flat_pred = target.reshape(-1).numpy(), logits.argmax(-1).reshape(-1).numpy()
    for metric, expected in [
        (Accuracy(), accuracy_score(flat_target, flat_pred)),
        (TopKAccuracy(2), top_k_accuracy_score(flat_target, logits.reshape(-1, 4).numpy(), k=2,
                                               labels=range(4))),
        (MatthewsCorrelation(), matthews_corrcoef(flat_target, flat_pred)),
    ]:
        metric.update(torch.tensor(0.0), logits[:4], target[:4])
        metric.update(torch.tensor(0.0), logits[4:], target[4:])
        assert metric.count == 30
        assert metric.compute() == pytest.approx(expected, abs=1e-12), metric.name
    one_hot = torch.nn.functional.one_hot(target, 4).float()  # one-hot targets over time
    accuracy = Accuracy()
    accuracy.update(torch.tensor(0.0), logits, one_hot)
    assert accuracy.compute() == pytest.approx(accuracy_score(flat_target, flat_pred))
    flat = Accuracy()  # 2-d one-hot targets, three classes: the arg-max of each row
    flat.update(torch.tensor(0.0), torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.0],
                                                 [0.1, 0.2, 0.7]]),
                torch.nn.functional.one_hot(torch.tensor([1, 1, 2]), 3).float())
    assert flat.compute() == pytest.approx(2 / 3) and flat.count == 3
    soft = one_hot * 0.7 + 0.1  # soft targets: the arg-max class counts
    accuracy.reset()
    accuracy.update(torch.tensor(0.0), logits, soft)
    assert accuracy.compute() == pytest.approx(accuracy_score(flat_target, flat_pred))


def test_one_logit_zero_is_the_negative_class() -> None:
    for metric in (Accuracy(), MatthewsCorrelation()):  # logit 0 predicts 0, logit 1 predicts 1
        metric.update(torch.tensor(0.0), torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1]))
        assert metric.compute() == 1.0, metric.name
    per_time = Accuracy()  # (batch, time, 1) logits against (batch, time) targets
    per_time.update(torch.tensor(0.0), torch.tensor([[[1.0], [-1.0], [2.0]]]),
                    torch.tensor([[1, 0, 0]]))
    assert per_time.compute() == pytest.approx(2 / 3)


def test_update_metrics_counts_only_the_real_rows(multiclass: tuple) -> None:
    """A batch whose tail is a distributed shard's padding: the metrics, the loss (recomputed on
    the real rows) and torchmetrics see the real rows only; a batch of padding alone, nothing."""
    logits, target = multiclass
    cross_entropy = torch.nn.functional.cross_entropy
    metrics = resolve_metrics(["accuracy", "mcc",
                               torchmetrics.classification.MulticlassAccuracy(6, average="micro")])
    for metric in metrics:
        metric.reset()
    padded_out, padded_y = torch.cat([logits[10:], logits[:4]]), torch.cat([target[10:],
                                                                           target[:4]])
    tl.metrics.update_metrics(metrics, cross_entropy(logits[:10], target[:10]), logits[:10],
                              target[:10])
    tl.metrics.update_metrics(metrics, cross_entropy(padded_out, padded_y), padded_out, padded_y,
                              rows=len(target) - 10, loss_fn=cross_entropy)
    tl.metrics.update_metrics(metrics, cross_entropy(logits[:3], target[:3]), logits[:3],
                              target[:3], rows=0, loss_fn=cross_entropy)
    predicted = logits.argmax(1).numpy()
    assert metrics[0].compute() == pytest.approx(float(cross_entropy(logits.double(), target)))
    assert metrics[1].compute() == pytest.approx(accuracy_score(target.numpy(), predicted))
    assert metrics[2].compute() == pytest.approx(matthews_corrcoef(target.numpy(), predicted))
    assert metrics[3].compute() == pytest.approx(accuracy_score(target.numpy(), predicted))


def test_take_rows_slices_nested_batches() -> None:
    batch = {"x": torch.arange(6).view(3, 2), "pair": (torch.arange(3), [torch.ones(3, 1)]),
             "scalar": torch.tensor(2.0), "name": "kept"}
    taken = tl.metrics.take_rows(batch, 2)
    assert taken["x"].tolist() == [[0, 1], [2, 3]] and taken["pair"][0].tolist() == [0, 1]
    assert isinstance(taken["pair"], tuple) and taken["pair"][1][0].shape == (2, 1)
    assert taken["scalar"].item() == 2.0 and taken["name"] == "kept"
