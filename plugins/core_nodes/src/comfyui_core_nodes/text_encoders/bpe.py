"""The CLIP byte-level BPE tokenizer (ids as transformers' CLIPTokenizer gives them).

The vocabulary is OpenAI's public ``bpe_simple_vocab_16e6.txt.gz``, read from the installed
``openai-clip`` distribution (never imported, never downloaded).
"""
from __future__ import annotations

import functools
import gzip
import importlib.metadata
import unicodedata
from pathlib import Path

import regex

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# The released vocabulary keeps this many merges (49408 ids = 512 byte symbols + merges + 2 specials).
_MERGE_COUNT = 49152 - 256 - 2
_VOCAB_DISTRIBUTION = "openai-clip"
_VOCAB_FILE = "clip/bpe_simple_vocab_16e6.txt.gz"

# CLIP's pre-tokenisation: English contractions, letter runs, single digits, and runs of everything
# else that is not whitespace.
_WORD_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
# Special tokens count only when written exactly so in the raw text (as transformers matches them).
_SPECIAL_PATTERN = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
_WHITESPACE = regex.compile(r"\s+")


class VocabularyNotFound(RuntimeError):
    """The CLIP BPE vocabulary file is not installed."""


def vocabulary_path() -> Path:
    """Where the installed ``openai-clip`` distribution keeps the BPE merges file."""
    try:
        distribution = importlib.metadata.distribution(_VOCAB_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as error:
        raise VocabularyNotFound(
            f"the CLIP tokenizer vocabulary comes from the {_VOCAB_DISTRIBUTION!r} package, which is not "
            f"installed: pip install {_VOCAB_DISTRIBUTION}==1.0.1") from error
    path = Path(str(distribution.locate_file(_VOCAB_FILE)))
    if not path.is_file():
        raise VocabularyNotFound(f"{_VOCAB_DISTRIBUTION} is installed but {path} is missing")
    return path


_PRINTABLE_BYTES = (*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1))


@functools.lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """A printable character per byte value, so BPE works on text without whitespace or controls.

    Printable Latin-1 bytes stand for themselves; the others are mapped, in order, to code points
    from 256 up (the GPT-2/CLIP convention). The dict's order, printable bytes first, is the order of
    the first 256 vocabulary ids.
    """
    symbols = {byte: chr(byte) for byte in _PRINTABLE_BYTES}
    others = [byte for byte in range(256) if byte not in symbols]
    symbols.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return symbols


class ClipBPE:
    """Text to CLIP token ids, without start/end tokens."""

    def __init__(self, merges_path: Path | None = None) -> None:
        lines = gzip.open(merges_path or vocabulary_path()).read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:_MERGE_COUNT + 1]]
        symbols = byte_symbols()
        vocabulary = list(symbols.values()) + [s + "</w>" for s in symbols.values()] + ["".join(pair) for pair in merges]
        vocabulary += [START_TOKEN, END_TOKEN]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocabulary)}
        self.decoder: dict[int, str] = {i: token for token, i in self.encoder.items()}
        self.merge_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id = self.encoder[START_TOKEN]
        self.end_id = self.encoder[END_TOKEN]
        self._cache: dict[str, tuple[str, ...]] = {}

    def _bpe(self, word: str) -> tuple[str, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        unknown = len(self.merge_ranks)
        while len(parts) > 1:
            # Merge every occurrence of the best-ranked adjacent pair, then look again.
            best = min(zip(parts, parts[1:]), key=lambda pair: self.merge_ranks.get(pair, unknown))
            if best not in self.merge_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        result = tuple(parts)
        self._cache[word] = result
        return result

    @staticmethod
    def normalize(text: str) -> str:
        """NFC, whitespace runs to one space, lower case (transformers' CLIP tokenizer normaliser)."""
        return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).lower()

    def encode(self, text: str) -> list[int]:
        symbols = byte_symbols()
        ids: list[int] = []
        for piece in _SPECIAL_PATTERN.split(text):
            if piece in (START_TOKEN, END_TOKEN):
                ids.append(self.encoder[piece])
                continue
            for word in _WORD_PATTERN.findall(self.normalize(piece)):
                mapped = "".join(symbols[b] for b in word.encode("utf-8"))
                ids.extend(self.encoder[token] for token in self._bpe(mapped))
        return ids

    def __call__(self, text: str) -> list[int]:
        """Ids with the start and end tokens around them, as ``CLIPTokenizer(text)["input_ids"]``."""
        return [self.start_id, *self.encode(text), self.end_id]


@functools.lru_cache(maxsize=1)
def shared_bpe() -> ClipBPE:
    """One tokenizer per process: building the merge table takes a fraction of a second."""
    return ClipBPE()
