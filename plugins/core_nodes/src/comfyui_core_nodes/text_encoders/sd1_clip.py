"""What vanilla custom nodes import from ``comfy.sd1_clip``: the prompt-syntax helpers, under ComfyUI's names."""
from __future__ import annotations

from typing import Optional, Union

import torch

from .tokenizer import _ESCAPES, SDTokenizer, _split_parentheses, _weighted_segments, load_embedding

parse_parentheses = _split_parentheses
token_weights = _weighted_segments


def escape_important(text: str) -> str:
    for escaped, placeholder in _ESCAPES:
        text = text.replace(escaped, placeholder)
    return text


def unescape_important(text: str) -> str:
    for escaped, placeholder in _ESCAPES:
        text = text.replace(placeholder, escaped[-1])
    return text


def gen_empty_tokens(special_tokens: dict[str, Optional[int]], length: int) -> list[Optional[int]]:
    """The empty prompt: start and end tokens (those the encoder has), then padding to ``length``."""
    tokens = [special_tokens[name] for name in ("start", "end") if special_tokens.get(name) is not None]
    return tokens + [special_tokens.get("pad")] * (length - len(tokens))


def load_embed(embedding_name: str, embedding_directory: Union[str, list[str]], embedding_size: int,
               embed_key: Optional[str] = None) -> Optional[torch.Tensor]:
    directories = [embedding_directory] if isinstance(embedding_directory, str) else list(embedding_directory)
    return load_embedding(embedding_name, directories, embedding_size, embed_key)


__all__ = ["SDTokenizer", "escape_important", "gen_empty_tokens", "load_embed", "parse_parentheses",
           "token_weights", "unescape_important"]
