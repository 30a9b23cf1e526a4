"""Readers of real data sets from their canonical upstream files, as unbatched ArrayDatasets.

Each reader looks under ``root`` (default ``$TRAININGLOOP_DATA``, else
``~/.cache/trainingloop``) in the data set's own folder, downloads missing files from the
canonical source when ``download=True`` and ``$TRAININGLOOP_NO_DOWNLOAD`` is unset (checking a
checksum, writing atomically), and otherwise fails with an error that names every missing file
and the folder searched. A corrupt or truncated file is reported as such, never half-read.

Images come as ``"image"`` (uint8, N×H×W×C) and ``"label"`` (int64). Language-modelling sets
come as ``"input"``/``"target"`` token blocks shifted by one; CoLA as padded ``"tokens"`` and
``"label"``. The tokenizer of a text set is in ``dataset.attributes["tokenizer"]``.

This module only assembles data sets. Finding and fetching files is
:mod:`~trainingloop.data.download`, parsing them :mod:`~trainingloop.data.formats`, and the
vocabulary :mod:`~trainingloop.data.tokenizer`; ``DataFileError``, ``Tokenizer``,
``data_root`` and ``read_idx`` are importable from here as well.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from trainingloop.data.download import DataFileError, FileSources, data_root, require_files
from trainingloop.data.formats import cifar_archive, cifar_pickle, cifar_records, cola_rows, read_idx
from trainingloop.data.pipeline import ArrayDataset
from trainingloop.data.tokenizer import Tokenizer

__all__ = [
    "DataFileError",
    "Tokenizer",
    "cifar10",
    "cola",
    "data_root",
    "digits",
    "fashion_mnist",
    "mnist",
    "shakespeare_text",
    "synthetic_linear",
    "tiny_shakespeare",
    "wikitext2",
]


# -- MNIST and Fashion-MNIST (idx) -----------------------------------------------------------
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_SHA = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_FASHION_SHA = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}


def _idx_set(folder_name: str, url: str, sha: dict[str, str], split: str,
             root: str | os.PathLike[str] | None, download: bool) -> ArrayDataset:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]
    folder = data_root(root) / folder_name
    paths = require_files(folder, {n: (url + n, "sha256:" + sha[n]) for n in names}, download,
                          f"Put the original idx .gz files of {folder_name} there.")
    images = read_idx(paths[names[0]])
    labels = read_idx(paths[names[1]])
    if len(images) != len(labels):
        raise DataFileError(f"{folder}: {len(images)} images but {len(labels)} labels")
    return ArrayDataset({"image": torch.from_numpy(images.copy()).unsqueeze(-1),
                         "label": torch.from_numpy(labels.astype(np.int64))})


def mnist(split: str = "train", root: str | os.PathLike[str] | None = None,
          download: bool = True) -> ArrayDataset:
    """MNIST: 60000 train / 10000 test images, uint8 N×28×28×1, labels 0-9."""
    return _idx_set("mnist", _MNIST_URL, _MNIST_SHA, split, root, download)


def fashion_mnist(split: str = "train", root: str | os.PathLike[str] | None = None,
                  download: bool = True) -> ArrayDataset:
    """Fashion-MNIST: 60000 train / 10000 test images, uint8 N×28×28×1, labels 0-9."""
    return _idx_set("fashion-mnist", _FASHION_URL, _FASHION_SHA, split, root, download)


# -- CIFAR-10 ---------------------------------------------------------------------------------
_CIFAR_BIN = ("cifar-10-binary.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
              "md5:c32a1d4ab5d03f1284b67883e8d87530")
_CIFAR_SUBSET = {"train": "data_batch_1_first4000.bin", "test": "test_batch_first1000.bin"}
_CIFAR_HINT = ("Put cifar-10-batches-bin/ (data_batch_1..5.bin, test_batch.bin), "
               "cifar-10-batches-py/ or cifar-10-binary.tar.gz there.")


def cifar10(split: str = "train", root: str | os.PathLike[str] | None = None,
            download: bool = True, subset: bool = False) -> ArrayDataset:
    """CIFAR-10: 50000 train / 10000 test images, uint8 N×32×32×3, labels 0-9.

    Reads ``cifar-10/cifar-10-batches-bin/`` (binary records), ``cifar-10/cifar-10-batches-py/``
    (python batches, unpickled with only NumPy arrays allowed) or the ``.tar.gz`` archive.
    ``subset=True`` reads the offline mirror's ``cifar-10-subset/`` instead (the first 4000
    train and 1000 test images, as binary records); it is read only when asked for.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = data_root(root)
    if subset:
        name = _CIFAR_SUBSET[split]
        path = require_files(base / "cifar-10-subset", {name: (None, None)}, False,
                             "It is the offline mirror's partial copy of CIFAR-10.")[name]
        parts = [cifar_records(path.read_bytes(), name)]
    else:
        parts = _cifar10_full(base, split, download)
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset({"image": torch.from_numpy(np.ascontiguousarray(images)),
                         "label": torch.from_numpy(labels)})


def _cifar10_full(base: Path, split: str, download: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches of ``split`` from whichever full copy ``base / "cifar-10"`` holds."""
    folder = base / "cifar-10"
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if all((folder / "cifar-10-batches-bin" / f"{s}.bin").exists() for s in stems):
        return [cifar_records((folder / "cifar-10-batches-bin" / f"{s}.bin").read_bytes(), s)
                for s in stems]
    if all((folder / "cifar-10-batches-py" / s).exists() for s in stems):
        return [cifar_pickle((folder / "cifar-10-batches-py" / s).read_bytes(), s) for s in stems]
    hint = _CIFAR_HINT
    if (base / "cifar-10-subset").is_dir():
        hint += (f" The partial copy in {base / 'cifar-10-subset'} is read only with "
                 "subset=True.")
    archive = require_files(folder, {_CIFAR_BIN[0]: _CIFAR_BIN[1:]}, download, hint)
    return cifar_archive(archive[_CIFAR_BIN[0]], stems)


# -- text -------------------------------------------------------------------------------------
def _blocks(ids: Sequence[int], block_size: int, tokenizer: Tokenizer) -> ArrayDataset:
    """Non-overlapping blocks: ``input`` ids[t:t+T] and ``target`` ids[t+1:t+T+1]."""
    stream = torch.tensor(ids, dtype=torch.int64)
    count = (len(stream) - 1) // block_size
    if count < 1:
        raise ValueError(f"text of {len(stream)} tokens is too short for block_size {block_size}")
    x = stream[: count * block_size].view(count, block_size)
    y = stream[1: count * block_size + 1].view(count, block_size)
    dataset = ArrayDataset({"input": x, "target": y})
    dataset.attributes["tokenizer"] = tokenizer
    return dataset


_SHAKESPEARE = ("input.txt", "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                "tinyshakespeare/input.txt",
                "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")


def shakespeare_text(root: str | os.PathLike[str] | None = None, download: bool = True) -> str:
    """The whole text of Tiny Shakespeare (Karpathy's ``input.txt``), for recipes that tokenize
    it themselves (nanoGPT's ``prepare.py``: one token per character)."""
    folder = data_root(root) / "tinyshakespeare"
    path = require_files(folder, {_SHAKESPEARE[0]: _SHAKESPEARE[1:]}, download,
                         "Put Karpathy's input.txt there.")[_SHAKESPEARE[0]]
    return path.read_text(encoding="utf-8")


def tiny_shakespeare(split: str = "train", root: str | os.PathLike[str] | None = None,
                     block_size: int = 64, download: bool = True) -> ArrayDataset:
    """Tiny Shakespeare, character-level: the first 90% is ``train``, the rest ``validation``."""
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    text = shakespeare_text(root, download)
    cut = int(len(text) * 0.9)
    tokenizer = Tokenizer.build([text[:cut]], level="char", specials=("<unk>",))
    part = text[:cut] if split == "train" else text[cut:]
    return _blocks(tokenizer.encode(part), block_size, tokenizer)


_WIKITEXT_FILES = {"train": "wiki.train.tokens", "validation": "wiki.valid.tokens",
                   "test": "wiki.test.tokens"}


def _wikitext_lines(folder: Path, split: str, download: bool) -> list[str]:
    name = _WIKITEXT_FILES[split]
    path = require_files(folder, {name: (None, None)}, download,
                         "Put the tokenized WikiText-2 v1 files (wiki.{train,valid,test}.tokens) "
                         "there.")
    return path[name].read_text(encoding="utf-8").splitlines()


def wikitext2(split: str = "train", root: str | os.PathLike[str] | None = None,
              block_size: int = 35, vocabulary_split: str = "train",
              download: bool = True) -> ArrayDataset:
    """WikiText-2 (tokenized v1), word-level with ``<eos>`` ending each line.

    The vocabulary is built from ``vocabulary_split`` (the training split, unless it is
    missing and you choose another); words outside it become ``<unk>``.
    """
    for name in (split, vocabulary_split):
        if name not in _WIKITEXT_FILES:
            raise ValueError(f"split must be one of {list(_WIKITEXT_FILES)}, got {name!r}")
    folder = data_root(root) / "wikitext-2"

    def words(lines: list[str]) -> list[str]:
        return [w for line in lines for w in [*line.split(), "<eos>"]]

    vocab_words = words(_wikitext_lines(folder, vocabulary_split, download))
    tokenizer = Tokenizer.build([" ".join(vocab_words)], level="word")
    text = vocab_words if split == vocabulary_split else words(
        _wikitext_lines(folder, split, download))
    return _blocks(tokenizer.encode(" ".join(text)), block_size, tokenizer)


_COLA_FILES = {"train": "in_domain_train.tsv", "validation": "in_domain_dev.tsv",
               "validation_out_of_domain": "out_of_domain_dev.tsv"}


def _cola_words(text: str) -> str:
    return " ".join(re.findall(r"\w+|[^\w\s]", text.lower()))


def cola(split: str = "train", root: str | os.PathLike[str] | None = None,
         max_length: int = 48, download: bool = True) -> ArrayDataset:
    """CoLA (v1.1 public release): ``"tokens"`` padded with 0 to ``max_length``, ``"label"``.

    Splits: ``train`` (8551), ``validation`` (in-domain dev, 527) and
    ``validation_out_of_domain`` (516). Words are lower-cased; the vocabulary comes from train.
    Each sequence starts with a ``<cls>`` token (id 2).
    """
    if split not in _COLA_FILES:
        raise ValueError(f"split must be one of {list(_COLA_FILES)}, got {split!r}")
    folder = data_root(root) / "cola" / "cola_public" / "raw"
    archive = data_root(root) / "cola" / "cola_public_1.1.zip"
    if not folder.is_dir() and download:
        require_files(archive.parent, {archive.name: (
            "https://nyu-mll.github.io/CoLA/cola_public_1.1.zip",
            "sha256:2cf856f46df11c143d38e0cf2f9f34ff2fdb088c521cd859f5c4b9581683278b")},
            download, "")
        with zipfile.ZipFile(archive) as z:
            z.extractall(archive.parent)
    names: FileSources = {_COLA_FILES["train"]: (None, None), _COLA_FILES[split]: (None, None)}
    paths = require_files(folder, names, False, "Unzip CoLA's cola_public_1.1.zip into cola/.")
    train_rows = cola_rows(paths[_COLA_FILES["train"]])
    tokenizer = Tokenizer.build((_cola_words(t) for _, t in train_rows), level="word",
                                specials=("<pad>", "<unk>", "<cls>"))
    rows = train_rows if split == "train" else cola_rows(paths[_COLA_FILES[split]])
    tokens = torch.zeros(len(rows), max_length, dtype=torch.int64)
    for i, (_, text) in enumerate(rows):
        ids = [2, *tokenizer.encode(_cola_words(text))][:max_length]
        tokens[i, : len(ids)] = torch.tensor(ids)
    dataset = ArrayDataset({"tokens": tokens,
                            "label": torch.tensor([label for label, _ in rows])})
    dataset.attributes["tokenizer"] = tokenizer
    return dataset


# -- built-in and synthetic -------------------------------------------------------------------
def digits(split: str = "train", root: str | os.PathLike[str] | None = None,
           test_fraction: float = 0.2) -> ArrayDataset:
    """scikit-learn's bundled 8×8 digits (1797 images, values 0-16 as uint8 N×8×8×1).

    A fixed, seeded split: ``train`` and ``test`` (``validation`` is the same examples).
    """
    if split not in ("train", "test", "validation"):
        raise ValueError(f"split must be 'train', 'test' or 'validation', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("digits needs scikit-learn: pip install 'trainingloop[datasets]'") \
            from error
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.uint8)).unsqueeze(-1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(len(labels) * (1 - test_fraction))
    chosen = order[:cut] if split == "train" else order[cut:]
    return ArrayDataset({"image": images[chosen], "label": labels[chosen]})


def synthetic_linear(w: Sequence[float] | torch.Tensor, b: float, n: int, noise: float = 0.01,
                     seed: int = 0) -> ArrayDataset:
    """d2l's ``synthetic_data``: ``y = Xw + b + noise``, X standard normal; columns X, y."""
    g = torch.Generator().manual_seed(seed)
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
    x = torch.normal(0.0, 1.0, (n, len(w)), generator=g)
    y = x @ w + b
    y += torch.normal(0.0, noise, y.shape, generator=g)
    return ArrayDataset({"features": x, "label": y.reshape(-1, 1)})
