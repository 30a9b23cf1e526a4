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


# -- found by mutation testing (`make mutate`): edges the tests above did not pin down --------
def test_hwc2chw_single_image_and_bad_rank() -> None:
    x = torch.arange(3 * 4 * 5).reshape(3, 4, 5)  # H, W, C
    out = HWC2CHW()(x)
    assert out.shape == (5, 3, 4) and out.is_contiguous()
    assert all(out[c, h, w] == x[h, w, c] for c in range(5) for h in range(3) for w in range(4))
    with pytest.raises(ValueError, match=r"3-d or 4-d tensor, got shape \(3, 4\)"):
        HWC2CHW()(torch.zeros(3, 4))


def test_normalize_dtypes_scalar_mean_and_channel_first_errors() -> None:
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)  # N=1, H=1, W=1, C=2
    out = Normalize((0.0, 255.0), (255.0, 5.0))(x)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([[[[0.0, 0.0]]]]))
    doubles = torch.tensor([[[[1.0 / 3.0]]]], dtype=torch.float64)
    normalized = Normalize(1e-9, 3.0)(doubles)
    assert normalized.dtype == torch.float64
    assert normalized.item() == (1.0 / 3.0 - 1e-9) / 3.0  # the float64 arithmetic, no rounding
    chw = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    expected = (chw - torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)) / torch.tensor(
        [2.0, 4.0, 8.0]).view(3, 1, 1)
    assert torch.equal(Normalize((1.0, 2.0, 3.0), (2.0, 4.0, 8.0), is_hwc=False)(chw), expected)
    with pytest.raises(ValueError, match=r"2 channel means.*has 3 channels \(is_hwc=False\)"):
        Normalize((0.0, 0.0), (1.0, 1.0), is_hwc=False)(chw)
    with pytest.raises(ValueError, match="std must not be zero"):
        Normalize((0.0, 0.0), (1.0, 0.0))


def test_random_crop_reaches_every_window_and_pads_channel_first() -> None:
    torch.manual_seed(2)
    image = torch.arange(1, 17, dtype=torch.float32).reshape(1, 4, 4, 1)
    out = RandomCrop(4, padding=1)(image.repeat(200, 1, 1, 1))
    padded = torch.nn.functional.pad(image[0], (0, 0, 1, 1, 1, 1))
    windows = {(i, j): padded[i:i + 4, j:j + 4] for i in range(3) for j in range(3)}
    found = {key for key, w in windows.items() if any(torch.equal(o, w) for o in out)}
    assert found == set(windows)  # all 3 x 3 offsets, the last row and column included
    chw = HWC2CHW()(image).repeat(50, 1, 1, 1)  # N, 1, 4, 4
    cropped = RandomCrop((2, 3), padding=1, is_hwc=False)(chw)
    assert cropped.shape == (50, 1, 2, 3) and cropped.is_contiguous()
    padded_chw = torch.nn.functional.pad(chw[0], (1, 1, 1, 1))
    assert all(any(torch.equal(c, padded_chw[:, i:i + 2, j:j + 3]) for i in range(5)
                   for j in range(4)) for c in cropped)
    assert torch.equal(RandomCrop(4)(image), image)  # the whole image is the only window
    with pytest.raises(ValueError, match=r"size \(5, 5\) exceeds padded image \(4, 4\)"):
        RandomCrop(5)(image)
    with pytest.raises(ValueError, match=r"size \(2, 5\) exceeds"):  # too wide only
        RandomCrop((2, 5))(image)
    with pytest.raises(ValueError, match=r"\(4-d\), got shape \(4, 4, 1\)"):
        RandomCrop(2)(image[0])


def test_random_horizontal_flip_channel_first_and_bad_p() -> None:
    x = torch.arange(12.0).reshape(1, 1, 3, 4).repeat(3, 1, 1, 1)  # N, C, H, W
    assert torch.equal(RandomHorizontalFlip(p=1.0, is_hwc=False)(x), x.flip(3))
    assert torch.equal(RandomHorizontalFlip(p=0.0, is_hwc=False)(x), x)
    for p in (-0.1, 1.1):
        with pytest.raises(ValueError, match="0 <= p <= 1"):
            RandomHorizontalFlip(p=p)
    with pytest.raises(ValueError, match="4-d"):
        RandomHorizontalFlip()(torch.zeros(3, 4, 1))


def test_reprs() -> None:
    assert repr(Rescale(0.5, 1)) == "Rescale(0.5, 1.0)"
    assert repr(Normalize((1.0,), (2.0,), is_hwc=False)) == \
        "Normalize(mean=(1.0,), std=(2.0,), is_hwc=False)"
    assert repr(HWC2CHW()) == "HWC2CHW()"
    assert repr(TypeCast(torch.int8)) == "TypeCast(torch.int8)"
    assert repr(RandomCrop(3, padding=2)) == "RandomCrop((3, 3), padding=2, is_hwc=True)"
    assert repr(RandomHorizontalFlip(0.25, is_hwc=False)) == \
        "RandomHorizontalFlip(p=0.25, is_hwc=False)"
