"""Readers on the real files of the offline mirror; errors for missing and corrupt files."""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, require_data

import trainingloop as tl
from trainingloop.data.datasets import DataFileError, Tokenizer, read_idx


def _pixel_mean(ds: tl.data.ArrayDataset) -> float:
    return float(tl.transforms.Rescale(1 / 255, 0)(ds.column("image")).mean())


def test_mnist_real_files() -> None:
    require_data("mnist", "train-images-idx3-ubyte.gz")
    train = tl.datasets.mnist("train", root=DATA_ROOT, download=False)
    test = tl.datasets.mnist("test", root=DATA_ROOT, download=False)
    assert train.column("image").shape == (60000, 28, 28, 1)
    assert train.column("image").dtype == torch.uint8 and train.column("label").dtype == torch.int64
    assert len(test) == 10000
    assert _pixel_mean(train) == pytest.approx(0.1307, abs=5e-5)
    assert torch.bincount(train.column("label")).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_fashion_mnist_real_files() -> None:
    train = tl.datasets.fashion_mnist("train", root=DATA_ROOT, download=False)
    assert _pixel_mean(train) == pytest.approx(0.2860, abs=5e-5)
    assert torch.bincount(train.column("label")).tolist() == [6000] * 10


def test_cifar10_subset_and_canonical_layout(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for by name: no warning
        train = tl.datasets.cifar10("train", root=DATA_ROOT, subset=True)
    assert train.column("image").shape == (4000, 32, 32, 3)
    assert train.column("label")[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    means = (train.column("image").float() / 255).mean((0, 1, 2))
    assert torch.allclose(means, torch.tensor([0.4916, 0.4818, 0.4447]), atol=5e-4)
    # The canonical binary layout, built from the mirror's records.
    folder = tmp_path / "cifar-10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    records = require_data("cifar-10-subset", "data_batch_1_first4000.bin").read_bytes()
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(records[: 3073 * 100 * i])
    (folder / "test_batch.bin").write_bytes(records[:3073 * 7])
    canonical = tl.datasets.cifar10("train", root=tmp_path, download=False)
    assert len(canonical) == 1500
    assert tl.datasets.cifar10("test", root=tmp_path, download=False).column("label")[:7].tolist() \
        == [6, 9, 9, 4, 1, 1, 2]


def test_cifar10_reads_the_subset_only_when_asked(tmp_path: Path) -> None:
    # The mirror has cifar-10-subset/ but no full set: without subset=True that is an error
    # naming the full set's files and folder, and pointing at the option.
    with pytest.raises(FileNotFoundError) as info:
        tl.datasets.cifar10("test", root=DATA_ROOT, download=False)
    message = str(info.value)
    assert "cifar-10-binary.tar.gz" in message and "cifar-10-batches-bin/" in message
    assert str(DATA_ROOT / "cifar-10") in message
    assert str(DATA_ROOT / "cifar-10-subset") in message and "subset=True" in message
    # Without a subset folder the option is not mentioned.
    with pytest.raises(FileNotFoundError) as info:
        tl.datasets.cifar10("test", root=tmp_path, download=False)
    assert str(tmp_path / "cifar-10") in str(info.value) and "subset=True" not in str(info.value)
    # Asked for, a missing subset names its file and folder.
    with pytest.raises(FileNotFoundError) as info:
        tl.datasets.cifar10("train", root=tmp_path, subset=True)
    assert "data_batch_1_first4000.bin" in str(info.value)
    assert str(tmp_path / "cifar-10-subset") in str(info.value)
    test = tl.datasets.cifar10("test", root=DATA_ROOT, subset=True)
    assert len(test) == 1000 and test.column("label")[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_cifar10_truncated_record_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in ["test_batch.bin"]:
        (folder / name).write_bytes(b"\x00" * 3000)
    with pytest.raises(DataFileError, match="truncated"):
        tl.datasets.cifar10("test", root=tmp_path, download=False)


def test_cola_rows_and_vocabulary() -> None:
    train = tl.datasets.cola("train", root=DATA_ROOT, download=False)
    dev = tl.datasets.cola("validation", root=DATA_ROOT, download=False)
    ood = tl.datasets.cola("validation_out_of_domain", root=DATA_ROOT, download=False)
    assert (len(train), len(dev), len(ood)) == (8551, 527, 516)
    assert torch.bincount(train.column("label")).tolist() == [2528, 6023]
    assert torch.bincount(dev.column("label")).tolist() == [162, 365]
    tokenizer = train.attributes["tokenizer"]
    ids = train.column("tokens")[0]
    assert ids[0] == 2
    words = tokenizer.decode(i for i in ids[1:].tolist() if i != 0)
    assert words == "our friends won ' t buy this analysis , let alone the next one we propose ."


def test_tiny_shakespeare_blocks_round_trip() -> None:
    train = tl.datasets.tiny_shakespeare("train", root=DATA_ROOT, block_size=32, download=False)
    val = tl.datasets.tiny_shakespeare("validation", root=DATA_ROOT, block_size=32)
    tokenizer = train.attributes["tokenizer"]
    assert len(tokenizer) == 66  # 65 characters + <unk>
    x, y = train[0]
    assert tokenizer.decode(x.tolist()).startswith("First Citizen:")
    assert torch.equal(x[1:], y[:-1])
    text = (DATA_ROOT / "tinyshakespeare" / "input.txt").read_text()
    assert len(train) == (int(len(text) * 0.9) - 1) // 32
    assert len(val) > 0


def test_wikitext2_valid_and_test() -> None:
    test = tl.datasets.wikitext2("test", root=DATA_ROOT, vocabulary_split="validation",
                                 block_size=35, download=False)
    tokenizer = test.attributes["tokenizer"]
    assert (len(test) * 35 + 1) <= 245569 < (len(test) + 1) * 35 + 1
    valid = tl.datasets.wikitext2("validation", root=DATA_ROOT, vocabulary_split="validation",
                                  block_size=35)
    stream = torch.cat([valid.column("input").reshape(-1)])
    assert tokenizer.decode(stream[:3].tolist()) == "<eos> = Homarus"
    with pytest.raises(FileNotFoundError, match=r"wiki\.train\.tokens"):
        tl.datasets.wikitext2("train", root=DATA_ROOT, download=False)


def test_tokenizer_round_trip_and_unknown() -> None:
    tokenizer = Tokenizer.build(["a b b c"], level="word")
    assert tokenizer.tokens[:3] == ["<pad>", "<unk>", "b"]
    assert tokenizer.decode(tokenizer.encode("c b a")) == "c b a"
    assert tokenizer.encode("z") == [1]


def test_digits_and_synthetic_linear() -> None:
    train, test = tl.datasets.digits("train"), tl.datasets.digits("test")
    assert len(train) + len(test) == 1797
    assert train.column("image").shape[1:] == (8, 8, 1)
    assert int(train.column("image").max()) == 16
    ds = tl.datasets.synthetic_linear([2, -3.4], 4.2, 1000)
    x, y = ds.column("features"), ds.column("label")
    assert x.shape == (1000, 2) and y.shape == (1000, 1)
    residual = y[:, 0] - (x @ torch.tensor([2.0, -3.4]) + 4.2)
    assert residual.std() == pytest.approx(0.01, rel=0.1)


def test_missing_files_are_named_with_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        tl.datasets.mnist("train", root=tmp_path, download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert str(tmp_path / "mnist") in message
    with pytest.raises(FileNotFoundError, match="input.txt"):
        tl.datasets.tiny_shakespeare(root=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="in_domain_train.tsv"):
        tl.datasets.cola(root=tmp_path, download=False)


def test_offline_download_failure_names_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error
    import urllib.request

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.delenv("TRAININGLOOP_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz.*unreachable"):
        tl.datasets.mnist("test", root=tmp_path)
    assert not any((tmp_path / "mnist").iterdir())  # no partial files left


def test_download_checks_the_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import urllib.request

    source = require_data("mnist")

    def fake(url: str, timeout: float = 0) -> io.BytesIO:
        name = url.rsplit("/", 1)[1]
        data = (source / name).read_bytes()
        return io.BytesIO(data[:-10] if "labels" in name else data)  # labels arrive truncated

    monkeypatch.delenv("TRAININGLOOP_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(FileNotFoundError, match=r"corrupt or truncated"):
        tl.datasets.mnist("test", root=tmp_path)
    assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").exists()
    assert not (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()


def test_truncated_idx_is_reported(tmp_path: Path) -> None:
    raw = gzip.decompress(require_data("mnist", "t10k-labels-idx1-ubyte.gz").read_bytes())
    bad = tmp_path / "short.gz"
    bad.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataFileError, match="truncated"):
        read_idx(bad)
    cut = tmp_path / "cut.gz"
    shutil.copy(require_data("mnist", "t10k-labels-idx1-ubyte.gz"), cut)
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(DataFileError, match=r"corrupt or truncated"):
        read_idx(cut)
