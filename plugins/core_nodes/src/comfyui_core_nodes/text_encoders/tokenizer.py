"""Prompt tokenisation as ComfyUI does it: ``(text:1.2)`` weights, ``embedding:name``, 77-token chunks.

A tokenized prompt is ``{encoder key: [chunk, ...]}`` where a chunk is a list of ``(token, weight)``
pairs (``(token, weight, word_id)`` with ``return_word_ids``); a token is an int id or a tensor
(one textual-inversion vector).
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

import torch

from .bpe import ClipBPE, shared_bpe

logger = logging.getLogger(__name__)

Token = Union[int, torch.Tensor]
TokenizedPrompt = dict[str, list[list[tuple]]]
EmbeddingDirectories = Optional[Union[str, list[str]]]

EMBEDDING_PREFIX = "embedding:"
# A group of at least this many tokens (one weighted segment) may be split across two chunks;
# smaller groups move whole to the next chunk.
_MAX_WORD_LENGTH = 8
_EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")
# Private-use placeholders for escaped parentheses while weights are parsed.
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


# --- prompt weights ---------------------------------------------------------------------------

def _split_parentheses(text: str) -> list[str]:
    """Top-level pieces: plain runs and balanced ``(...)`` groups (kept with their parentheses).

    Unbalanced input follows ComfyUI: a stray ``)`` is text and leaves the depth negative, so the
    parentheses after it are text too; an unclosed ``(`` stays as text with its parenthesis.
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(" and depth == 0:
            if current:
                pieces.append(current)
            current = "("
            depth = 1
        elif char == "(":
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted_segments(text: str, weight: float) -> list[tuple[str, float]]:
    segments: list[tuple[str, float]] = []
    for piece in _split_parentheses(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            segments.append((piece, weight))
            continue
        inner = piece[1:-1]
        inner_weight = weight * 1.1
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1:])
                inner = inner[:colon]
            except ValueError:
                pass
        segments.extend(_weighted_segments(inner, inner_weight))
    return segments


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """``"a (red:1.2) cat"`` -> ``[("a ", 1.0), ("red", 1.2), (" cat", 1.0)]``.

    ``(x)`` multiplies by 1.1 per level, ``(x:w)`` sets ``w``, ``\\(`` and ``\\)`` are literal
    parentheses. Square brackets are plain text, as in ComfyUI (they do not lower the weight).
    """
    for escaped, placeholder in _ESCAPES:
        text = text.replace(escaped, placeholder)
    segments = _weighted_segments(text, 1.0)
    unescaped = []
    for segment, weight in segments:
        for escaped, placeholder in _ESCAPES:
            segment = segment.replace(placeholder, escaped[-1])
        unescaped.append((segment, weight))
    return unescaped


# --- textual inversion embeddings ------------------------------------------------------------

def _embedding_file(name: str, directories: list[str]) -> Optional[str]:
    """The file ``name`` stands for in any of the folders (or their subfolders), extension optional."""
    searched: set[str] = set()
    for directory in directories:
        for root, _, _ in os.walk(directory, followlinks=True):
            searched.add(root)
        searched.add(directory)
    for directory in searched:
        directory = os.path.abspath(directory)
        path = os.path.abspath(os.path.join(directory, name))
        try:
            if os.path.commonpath((directory, path)) != directory:
                continue
        except ValueError:
            continue
        if os.path.isfile(path):
            return path
        for extension in _EMBEDDING_EXTENSIONS:
            if os.path.isfile(path + extension):
                return path + extension
    return None


def _raw_zip_embedding(path: str) -> Optional[torch.Tensor]:
    """Vectors straight from the data records of an old pickled .pt that weights_only refuses."""
    with zipfile.ZipFile(path) as archive:
        for member in reversed([n for n in archive.namelist() if "data/" in n]):
            data = archive.read(member)
            count = len(data) // 4
            if count < 768:
                continue
            width = 768 if count % 768 == 0 else 1024
            return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(count // width, width).clone()
    return None


def _bundled(contents: dict, suffix: str) -> Optional[torch.Tensor]:
    """Embeddings bundled inside a LoRA file (``bundle_emb.<name><suffix>`` keys)."""
    found = [value for key, value in contents.items() if key.startswith("bundle_emb.") and key.endswith(suffix)]
    return torch.cat(found, dim=0) if found else None


def load_embedding(name: str, directories: list[str], width: int, key: Optional[str]) -> Optional[torch.Tensor]:
    """The vectors of textual inversion ``name`` for an encoder ``width`` wide (``key``: clip_l, clip_g...)."""
    path = _embedding_file(name, directories)
    if path is None:
        return None
    contents: Any = None
    try:
        if path.lower().endswith(".safetensors"):
            import safetensors.torch
            contents = safetensors.torch.load_file(path, device="cpu")
        else:
            try:
                contents = torch.load(path, weights_only=True, map_location="cpu")
            except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError):
                return _raw_zip_embedding(path)
    except (OSError, RuntimeError, ValueError, zipfile.BadZipFile) as error:
        logger.warning("error loading embedding %s, skipping it: %s", name, error)
        return None
    if isinstance(contents, torch.Tensor):
        return contents
    if isinstance(contents, list):
        rows = [t.reshape(-1, t.shape[-1]) for entry in contents for t in entry.values() if t.shape[-1] == width]
        return torch.cat(rows, dim=0) if rows else None
    if "string_to_param" in contents:
        return next(iter(contents["string_to_param"].values()))
    if key is not None and key in contents:
        return contents[key]
    # The first suffix is literal: kohya names bundled vectors "bundle_emb.<name>.string_to_param.*".
    for suffix in (".string_to_param.*", f".{key}"):
        bundled = _bundled(contents, suffix)
        if bundled is not None:
            return bundled
    return next(iter(contents.values()))


# --- one encoder's tokenizer ----------------------------------------------------------------

@dataclass(frozen=True)
class TokenizerSpec:
    """How one text encoder's prompts are tokenized."""
    key: str                 # the tokenized prompt's key: "l", "h", "g"
    embedding_key: str       # which tensor of a multi-encoder embedding file: "clip_l", "clip_h", "clip_g"
    embedding_size: int      # width of this encoder's token embeddings
    pad_with_end: bool       # CLIP-L pads with the end token, OpenCLIP towers with 0
    max_length: int = 77


class SDTokenizer:
    """Tokenizer of one CLIP text encoder (ComfyUI's ``SDTokenizer``)."""

    def __init__(self, spec: TokenizerSpec, embedding_directory: EmbeddingDirectories = None,
                 bpe: Optional[ClipBPE] = None) -> None:
        self.spec = spec
        self.tokenizer = bpe or shared_bpe()
        self.embedding_directory = embedding_directory
        self.max_length = spec.max_length
        self.start_token = self.tokenizer.start_id
        self.end_token = self.tokenizer.end_id
        self.pad_token = self.end_token if spec.pad_with_end else 0
        self.embedding_identifier = EMBEDDING_PREFIX
        self.embedding_size = spec.embedding_size
        self.embedding_key = spec.embedding_key
        self.inv_vocab = self.tokenizer.decoder

    def clone(self) -> "SDTokenizer":
        return copy.copy(self)

    def embedding_directories(self) -> Optional[list[str]]:
        """The configured folders, or ``None`` when ``embedding:`` is plain text for this tokenizer."""
        if self.embedding_directory is None:
            return None
        if isinstance(self.embedding_directory, str):
            return [self.embedding_directory]
        return list(self.embedding_directory)

    def _embedding_with_leftover(self, text: str, directories: list[str]) -> tuple[Optional[torch.Tensor], str]:
        """The embedding named by the first word of ``text``, and the text after that name."""
        words = text.split()
        name = words[0] if words else ""
        leftover = " ".join(words[1:])
        embedding = load_embedding(name, directories, self.embedding_size, self.embedding_key)
        if embedding is None:
            stripped = name.strip(",")
            if len(stripped) < len(name):
                embedding = load_embedding(stripped, directories, self.embedding_size, self.embedding_key)
                return embedding, f"{name[len(stripped):]} {leftover}"
        return embedding, leftover

    def _groups(self, text: str) -> list[list[tuple[Token, float]]]:
        """The prompt as groups of weighted tokens: one per segment piece or embedding."""
        directories = self.embedding_directories()
        groups: list[list[tuple[Token, float]]] = []
        for segment, weight in parse_prompt_weights(text):
            pieces = re.split(f" {EMBEDDING_PREFIX}|\n{EMBEDDING_PREFIX}", segment)
            pieces = [pieces[0]] + [EMBEDDING_PREFIX + piece for piece in pieces[1:]]
            for piece in filter(None, pieces):
                if piece.startswith(EMBEDDING_PREFIX) and directories is not None:
                    name = piece[len(EMBEDDING_PREFIX):].strip("\n")
                    embedding, leftover = self._embedding_with_leftover(name, directories)
                    if embedding is None:
                        logger.warning("warning, embedding:%s does not exist, ignoring", name)
                    else:
                        vectors = embedding.reshape(-1, embedding.shape[-1])
                        groups.append([(vector, weight) for vector in vectors])
                    if not leftover:
                        continue
                    piece = leftover
                groups.append([(token, weight) for token in self.tokenizer.encode(piece)])
        return groups

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> list[list[tuple]]:
        """Chunks of ``max_length`` entries: start token, up to 75 prompt tokens, end token, padding."""
        start = (self.start_token, 1.0, 0)
        end = (self.end_token, 1.0, 0)
        pad = (self.pad_token, 1.0, 0)
        room = self.max_length - 1  # the end token always gets a place
        chunk: list[tuple] = [start]
        chunks = [chunk]
        for word_id, group in enumerate(self._groups(text), start=1):
            may_split = len(group) >= _MAX_WORD_LENGTH
            while group:
                if len(chunk) + len(group) <= room:
                    chunk.extend((token, weight, word_id) for token, weight in group)
                    break
                free = room - len(chunk)
                if may_split:
                    chunk.extend((token, weight, word_id) for token, weight in group[:free])
                    group = group[free:]
                    chunk.append(end)
                else:
                    chunk.append(end)
                    chunk.extend([pad] * free)
                chunk = [start]
                chunks.append(chunk)
        chunk.append(end)
        chunk.extend([pad] * (self.max_length - len(chunk)))
        if return_word_ids:
            return chunks
        return [[(token, weight) for token, weight, _ in chunk] for chunk in chunks]

    def untokenize(self, token_weight_pairs: Iterable[tuple]) -> list[tuple[tuple, str]]:
        return [(pair, self.inv_vocab[pair[0]]) for pair in token_weight_pairs]

    def state_dict(self) -> dict:
        return {}


class PromptTokenizer:
    """The tokenizers of a model's text encoders; ``tokenize_with_weights`` gives one entry per encoder.

    Each one is also an attribute named ``clip_<key>`` (``clip_l``, ``clip_g``...) as in ComfyUI.
    """

    def __init__(self, specs: Iterable[TokenizerSpec], embedding_directory: EmbeddingDirectories = None) -> None:
        self.tokenizers: dict[str, SDTokenizer] = {spec.key: SDTokenizer(spec, embedding_directory) for spec in specs}
        for key, tokenizer in self.tokenizers.items():
            setattr(self, f"clip_{key}", tokenizer)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> TokenizedPrompt:
        return {key: tokenizer.tokenize_with_weights(text, return_word_ids)
                for key, tokenizer in self.tokenizers.items()}

    def untokenize(self, token_weight_pairs: Iterable[tuple]) -> list[tuple[tuple, str]]:
        return next(iter(self.tokenizers.values())).untokenize(token_weight_pairs)

    def clone(self) -> "PromptTokenizer":
        clone = copy.copy(self)
        clone.tokenizers = {key: tokenizer.clone() for key, tokenizer in self.tokenizers.items()}
        for key, tokenizer in clone.tokenizers.items():
            setattr(clone, f"clip_{key}", tokenizer)
        return clone

    def state_dict(self) -> dict:
        return {}
