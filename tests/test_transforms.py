"""Each transform against hand computation."""

from __future__ import annotations

import pytest
import torch

from trainingloop.data.transforms import (
    HWC2CHW,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Rescale,
    TypeCast,
)


def test_rescale() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(Rescale(1 / 255, 0)(x), torch.tensor([0.0, 0.2, 1.0]))
    assert torch.allclose(Rescale(2.0, -1.0)(torch.tensor([0.5])), torch.tensor([0.0]))
    every_byte = torch.arange(256, dtype=torch.uint8).repeat(300)  # long enough to vectorise
    expected = every_byte * (1 / 255) - 0.5  # PyTorch's own mixed-dtype arithmetic
    assert torch.equal(Rescale(1 / 255, -0.5)(every_byte), expected)
    assert Rescale(0.5, 0)(torch.ones(2, dtype=torch.float64)).dtype == torch.float64


def test_normalize_channel_last_and_first() -> None:
    x = torch.tensor([[[[1.0, 10.0], [3.0, 20.0]]]])  # N=1, H=1, W=2, C=2
    out = Normalize(mean=(1.0, 10.0), std=(2.0, 5.0))(x)
    assert torch.allclose(out, torch.tensor([[[[0.0, 0.0], [1.0, 2.0]]]]))
    chw = HWC2CHW()(x)
    assert torch.allclose(Normalize((1.0, 10.0), (2.0, 5.0), is_hwc=False)(chw), HWC2CHW()(out))
    with pytest.raises(ValueError, match="3 channel means"):
        Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(x)


def test_hwc2chw() -> None:
    x = torch.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    out = HWC2CHW()(x)
    assert out.shape == (2, 5, 3, 4) and out.is_contiguous()
    assert out[1, 4, 2, 3] == x[1, 2, 3, 4]


def test_typecast() -> None:
    assert TypeCast(torch.int64)(torch.tensor([1.7])).dtype == torch.int64


def test_random_crop_windows_come_from_the_padded_image() -> None:
    torch.manual_seed(0)
    x = torch.arange(1, 2 * 4 * 4 + 1, dtype=torch.float32).reshape(2, 4, 4, 1)
    out = RandomCrop(4, padding=1)(x)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    for n in range(2):
        windows = [padded[n, i:i + 4, j:j + 4] for i in range(3) for j in range(3)]
        assert any(torch.equal(out[n], w) for w in windows)
    chw = RandomCrop(3, is_hwc=False)(HWC2CHW()(x))
    assert chw.shape == (2, 1, 3, 3)


def test_random_crop_varies_per_example() -> None:
    torch.manual_seed(1)
    x = torch.arange(16.0).reshape(1, 4, 4, 1).repeat(64, 1, 1, 1)
    out = RandomCrop(2)(x)
    assert len({tuple(o.flatten().tolist()) for o in out}) > 1


def test_random_horizontal_flip() -> None:
    torch.manual_seed(0)
    x = torch.arange(8.0).reshape(2, 1, 4, 1).repeat(50, 1, 1, 1)
    out = RandomHorizontalFlip(p=0.5)(x)
    flipped = [torch.equal(o, i.flip(1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 20 < sum(flipped) < 80
    assert torch.equal(RandomHorizontalFlip(p=1.0)(x), x.flip(2))
    assert torch.equal(RandomHorizontalFlip(p=0.0)(x), x)
