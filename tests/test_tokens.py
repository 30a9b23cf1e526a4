"""TokenDataset windows against hand-cut slices; nanoGPT's random sampler: determinism, real
windows, resume mid-stream, one stream per rank; nanoGPT's uint16 ``.bin`` files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

import trainingloop as tl
from trainingloop import distributed
from trainingloop.data import ArrayDataset, RandomWindows, TokenDataset
from trainingloop.data.pipeline import is_mapped


def _tokens(n: int = 37) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(0)) + 1000  # all distinct


def _by_hand(tokens: torch.Tensor, block: int, stride: int) -> list[tuple[list, list]]:
    return [(tokens[i:i + block].tolist(), tokens[i + 1:i + 1 + block].tolist())
            for i in range(0, len(tokens) - block, stride)]  # i + block + 1 <= len(tokens)


@pytest.mark.parametrize("block, stride", [(5, None), (5, 3), (5, 1), (6, 6), (36, None)])
def test_windows_are_the_slices_cut_by_hand(block: int, stride: int | None) -> None:
    tokens = _tokens(37)
    ds = TokenDataset(tokens, block, stride)
    expected = _by_hand(tokens, block, stride or block)
    assert len(ds) == len(expected)
    got = [(x.tolist(), y.tolist()) for x, y in ds]
    assert got == expected
    assert all(x.dtype == torch.int64 for x, _ in ds)
    batches = list(ds.batch(4))
    assert batches[0][0].shape == (min(4, len(expected)), block)
    assert [(r.tolist(), s.tolist()) for x, y in batches for r, s in zip(x, y)] == expected


def test_the_last_window_is_the_last_that_fits() -> None:
    tokens = torch.arange(37)
    assert len(TokenDataset(tokens, 5)) == 7  # i = 0, 5, …, 30: 30 + 5 + 1 = 36 <= 37
    x, y = TokenDataset(tokens, 5)[-1]
    assert x.tolist() == [30, 31, 32, 33, 34] and y.tolist() == [31, 32, 33, 34, 35]
    assert len(TokenDataset(torch.arange(36), 5)) == 7  # 30 + 6 = 36: still fits
    assert len(TokenDataset(torch.arange(35), 5)) == 6  # it no longer does
    x, y = TokenDataset(tokens, 36)[0]  # one window: every token
    assert x.tolist() == list(range(36)) and y.tolist() == list(range(1, 37))


def test_shuffle_batch_shard_and_map_match_the_same_windows_as_an_array_dataset() -> None:
    tokens = _tokens(200)
    hand = _by_hand(tokens, 8, 3)
    arrays = ArrayDataset({"input": torch.tensor([x for x, _ in hand]),
                           "target": torch.tensor([y for _, y in hand])})
    a, b = (d.map(lambda t: t * 2, "input").shuffle(3).shard(1, 3).batch(4)
            for d in (arrays, TokenDataset(tokens, 8, stride=3)))
    assert len(a) == len(b) == 6
    for epoch in range(2):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for (x1, y1), (x2, y2) in zip(a, b, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_numpy_tokens_of_any_integer_dtype_give_int64_windows() -> None:
    tokens = _tokens(50)
    for array in (tokens.numpy().astype(np.uint16), tokens.numpy().astype(np.int32),
                  tokens.to(torch.int32)):
        ds = TokenDataset(array, 7, stride=2).shuffle(0).batch(5)
        reference = TokenDataset(tokens, 7, stride=2).shuffle(0).batch(5)
        for (x1, y1), (x2, y2) in zip(ds, reference, strict=True):
            assert x1.dtype == y1.dtype == torch.int64
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_batches_are_fresh_tensors() -> None:
    tokens = torch.arange(40)
    x, y = next(iter(TokenDataset(tokens, 4).batch(3)))  # unshuffled: slices of the tokens
    x += 100
    assert torch.equal(tokens, torch.arange(40)) and y[0].tolist() == [1, 2, 3, 4]


def _bin(path: Path, n: int = 5000) -> np.ndarray:
    values = np.random.default_rng(0).integers(0, 65535, n, dtype=np.uint16)  # GPT-2 ids fit
    values.tofile(path)  # what nanoGPT's prepare.py does
    return values


def test_a_bin_file_is_memory_mapped_as_uint16(tmp_path: Path) -> None:
    values = _bin(tmp_path / "train.bin")
    reference = TokenDataset(torch.from_numpy(values.astype(np.int64)), 64)
    for source in (str(tmp_path / "train.bin"), tmp_path / "train.bin"):
        ds = TokenDataset(source, 64)
        assert is_mapped(ds.tokens) and ds.tokens.dtype == np.uint16
        assert len(ds) == len(reference) == (5000 - 65) // 64 + 1
        for a, b in zip(ds.shuffle(1).batch(16), reference.shuffle(1).batch(16), strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    stream = TokenDataset.random(tmp_path / "train.bin", 64, 12, seed=0)
    x, _ = next(iter(stream))
    assert is_mapped(stream.tokens) and x.max() > 255
    loaded = TokenDataset(tmp_path / "train.bin", 64).to("cpu")
    assert isinstance(loaded.tokens, torch.Tensor) and loaded.tokens.dtype == torch.int32
    assert all(torch.equal(a[0], b[0]) for a, b in zip(loaded.batch(8), reference.batch(8)))
    values.astype(np.uint32).tofile(tmp_path / "wide.bin")
    assert torch.equal(TokenDataset(tmp_path / "wide.bin", 64, dtype=np.uint32)[3][0],
                       reference[3][0])


def test_a_token_file_of_odd_size_is_refused_naming_file_and_size(tmp_path: Path) -> None:
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 1001)
    with pytest.raises(ValueError, match=r"odd\.bin.* 1001 bytes, not a multiple of 2"):
        TokenDataset(tmp_path / "odd.bin", 8)
    with pytest.raises(ValueError, match=r"odd\.bin.* 1001 bytes"):
        TokenDataset.random(str(tmp_path / "odd.bin"), 8, 4)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="token count 0"):
        TokenDataset(tmp_path / "empty.bin", 8)


@pytest.mark.parametrize("make, message", [
    (lambda: TokenDataset(torch.arange(10), 10), "block_size 10 is not smaller than the token "
                                                 "count 10"),
    (lambda: TokenDataset(torch.arange(10), 11), "block_size 11 is not smaller"),
    (lambda: TokenDataset(torch.arange(10), 0), "block_size must be a positive integer, got 0"),
    (lambda: TokenDataset(torch.arange(10), -3), "got -3"),
    (lambda: TokenDataset(torch.arange(10), 4, stride=0), "stride must be a positive integer, "
                                                          "got 0"),
    (lambda: TokenDataset(torch.arange(10), 4, stride=-1), "stride .* got -1"),
    (lambda: TokenDataset(torch.zeros(3, 4, dtype=torch.long), 2), r"1-D, got shape \(3, 4\)"),
    (lambda: TokenDataset(torch.zeros(10), 2), "integers, got dtype torch.float32"),
    (lambda: TokenDataset.random(torch.arange(10), 10, 4), "block_size 10 is not smaller"),
    (lambda: TokenDataset.random(torch.arange(10), 4, 0), "batch_size must be a positive "
                                                          "integer, got 0"),
])
def test_bad_values_raise_value_error_naming_them(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


# -- TokenDataset.random: nanoGPT's sampler ----------------------------------------------------
def _nanogpt_batches(data: np.ndarray, block: int, batch: int, seed: int, count: int) -> list:
    """nanoGPT's get_batch (train.py), on the global RNG after torch.manual_seed(seed)."""
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(count):
            ix = torch.randint(len(data) - block, (batch,))
            x = torch.stack([torch.from_numpy((data[i:i + block]).astype(np.int64)) for i in ix])
            y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block]).astype(np.int64))
                             for i in ix])
            out.append((x, y))
    return out


def _draw(stream: RandomWindows, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = iter(stream)
    return [next(batches) for _ in range(count)]


def test_random_windows_are_nanogpts_batches(tmp_path: Path) -> None:
    _bin(tmp_path / "train.bin")
    ours = _draw(TokenDataset.random(tmp_path / "train.bin", 64, 12, seed=1337), 5)
    theirs = _nanogpt_batches(np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r"),
                              64, 12, 1337, 5)
    for (x1, y1), (x2, y2) in zip(ours, theirs, strict=True):
        assert x1.shape == (12, 64) and x1.dtype == y1.dtype == torch.int64
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_random_stream_is_seeded_endless_and_made_of_real_windows() -> None:
    tokens = _tokens(300)
    where = torch.empty(2000, dtype=torch.long)
    where[tokens] = torch.arange(300)
    before = torch.random.get_rng_state()
    a = _draw(TokenDataset.random(tokens, 16, 8, seed=5), 6)
    assert torch.equal(torch.random.get_rng_state(), before)  # its own generator only
    b = _draw(TokenDataset.random(tokens, 16, 8, seed=5), 6)
    c = _draw(TokenDataset.random(tokens, 16, 8, seed=6), 6)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    for x, y in a:
        starts = where[x[:, 0]]
        offsets = starts[:, None] + torch.arange(16)
        assert torch.equal(x, tokens[offsets]) and torch.equal(y, tokens[offsets + 1])
    stream = TokenDataset.random(tokens, 16, 8, seed=5)
    with pytest.raises(TypeError):
        len(stream)  # type: ignore[arg-type]
    assert len(_draw(stream, 500)) == 500  # it does not run out
    first = _draw(TokenDataset.random(tokens, 299, 2, seed=0), 50)  # one window only
    assert all(torch.equal(x[0], tokens[:299]) for x, _ in first)


def test_every_iter_continues_the_one_stream_and_set_epoch_changes_nothing() -> None:
    tokens = _tokens(300)
    whole = _draw(TokenDataset.random(tokens, 16, 4, seed=2), 6)
    stream = TokenDataset.random(tokens, 16, 4, seed=2)
    parts = _draw(stream, 2)
    stream.set_epoch(7)
    parts += _draw(stream, 4)
    assert stream.drawn == 6
    assert all(torch.equal(p[0], q[0]) for p, q in zip(whole, parts, strict=True))


def test_random_stream_resumes_mid_stream_bit_for_bit() -> None:
    tokens = _tokens(500)
    uninterrupted = _draw(TokenDataset.random(tokens, 32, 6, seed=3), 9)
    first = TokenDataset.random(tokens, 32, 6, seed=3)
    _draw(first, 4)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as a checkpoint holds it
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["drawn"] == 4
    resumed = TokenDataset.random(tokens, 32, 6, seed=3)
    resumed.load_state_dict(state)
    rest = _draw(resumed, 5)
    for (x1, y1), (x2, y2) in zip(uninterrupted[4:], rest, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert resumed.drawn == 9
    with pytest.raises(ValueError, match="batch_size 6 but this one has 7"):
        TokenDataset.random(tokens, 32, 7, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="tokens 500 but this one has 499"):
        TokenDataset.random(tokens[:-1], 32, 6, seed=3).load_state_dict(state)


def test_to_continues_the_same_stream_on_the_device() -> None:
    tokens = _tokens(300)
    whole = _draw(TokenDataset.random(tokens, 16, 4, seed=2), 5)
    stream = TokenDataset.random(tokens, 16, 4, seed=2)
    head = _draw(stream, 2)
    moved = stream.to("cpu")
    assert moved.device == torch.device("cpu")
    tail = _draw(moved, 3)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(whole, head + tail, strict=True))


def test_shards_are_streams_of_their_own() -> None:
    tokens = _tokens(1000)
    stream = TokenDataset.random(tokens, 16, 8, seed=4)
    ranks = [_draw(stream.shard(r, 3), 3) for r in range(3)]
    for r in range(3):
        for q in range(r):
            assert not any(torch.equal(a[0], b[0]) for a, b in zip(ranks[r], ranks[q]))
    as_seeded = _draw(TokenDataset.random(tokens, 16, 8, seed=4 * 3 + 2), 3)  # seed·w + r
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ranks[2], as_seeded))
    alone = _draw(stream.shard(0, 1), 3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(alone, _draw(
        TokenDataset.random(tokens, 16, 8, seed=4), 3)))
    again = _draw(stream.shard(1, 3).shard(1, 3), 3)  # sharding twice is sharding once
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, ranks[1]))
    with pytest.raises(ValueError, match="rank 3"):
        stream.shard(3, 3)


def test_torchrun_shards_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    stream = distributed.shard(TokenDataset.random(_tokens(100), 8, 4, seed=0))
    assert isinstance(stream, RandomWindows) and (stream.rank, stream.world_size) == (1, 2)
    assert stream.batch_size == 4
    windows = TokenDataset(_tokens(100), 8).shuffle(0).batch(2)
    shard = distributed.shard(windows)
    assert isinstance(shard, TokenDataset) and len(shard) == 3 and len(windows) == 6


def test_token_dataset_resume_and_changed_length() -> None:
    tokens = _tokens(300)
    ds = TokenDataset(tokens, 10, stride=4).shuffle(1).batch(8)
    full = list(ds)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = ds.state_dict()
    resumed = TokenDataset(tokens, 10, stride=4).shuffle(1).batch(8)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[3:], rest, strict=True))
    with pytest.raises(ValueError, match=rf"for {state['length']} windows but this "
                                         rf"TokenDataset has {state['length'] - 2}"):
        TokenDataset(tokens[:-8], 10, stride=4).load_state_dict(state)


def test_cache_materialises_the_windows_with_the_transforms() -> None:
    tokens = _tokens(120)
    ds = TokenDataset(tokens, 6).map(lambda t: t + 1, "input").shuffle(2).batch(5)
    cached = ds.cache(chunk=7)
    assert type(cached) is ArrayDataset and cached.column("input").shape == (19, 6)
    for (a, b), (c, d) in zip(ds, cached, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert torch.equal(ds.column("target")[0], tokens[1:7])


def test_a_token_dataset_trains_in_fit() -> None:
    torch.manual_seed(0)
    tokens = torch.arange(400) % 7
    model = torch.nn.Sequential(torch.nn.Embedding(7, 8), torch.nn.Linear(8, 7))

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    loop = tl.TrainingLoop(TokenDataset(tokens, 8).shuffle(0).batch(8),
                           optimizer=torch.optim.Adam(model.parameters(), lr=0.05), loss=loss,
                           include_default_callbacks=False)
    loop.fit(model, epochs=3, device="cpu")
    assert loop.history["train/loss"][-1] < 0.5  # the next token of a cycle: learnt
