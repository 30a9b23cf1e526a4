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
    Perplexity,
    TopKAccuracy,
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
