"""The tokenizer of the text data sets: a vocabulary of characters or whitespace words."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

__all__ = ["Tokenizer"]


class Tokenizer:
    """A vocabulary of characters or whitespace words, built from a training split.

    >>> t = Tokenizer.build(["hello world"], level="word")
    >>> t.decode(t.encode("hello world"))
    'hello world'
    """

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, tokens: Sequence[str], level: str) -> None:
        if level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {level!r}")
        self.level = level
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: Iterable[str], level: str = "word", specials: Sequence[str] = (
            "<pad>", "<unk>")) -> Tokenizer:
        """Vocabulary of ``texts``: the specials first, then by falling frequency."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls.split(text, level))
        ordered = sorted(counts, key=lambda t: (-counts[t], t))
        return cls([*specials, *[t for t in ordered if t not in specials]], level)

    @staticmethod
    def split(text: str, level: str) -> list[str]:
        """Characters, or whitespace-separated words."""
        return list(text) if level == "char" else text.split()

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown tokens map to ``<unk>`` (if the vocabulary has it)."""
        unk = self.index.get(self.UNK)
        ids = []
        for token in self.split(text, self.level):
            i = self.index.get(token, unk)
            if i is None:
                raise KeyError(f"token {token!r} is not in the vocabulary")
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``."""
        joiner = "" if self.level == "char" else " "
        return joiner.join(self.tokens[int(i)] for i in ids)
