"""The CLIP tokenizer and ComfyUI's prompt syntax: ids, weights, escapes, chunks, textual inversions."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import safetensors.torch
import torch

from comfyui_core_nodes.text_encoders.bpe import ClipBPE, shared_bpe
from comfyui_core_nodes.text_encoders.tokenizer import (
    PromptTokenizer,
    SDTokenizer,
    TokenizerSpec,
    load_embedding,
    parse_prompt_weights,
)

START, END = 49406, 49407
CLIP_L = TokenizerSpec(key="l", embedding_key="clip_l", embedding_size=768, pad_with_end=True)
CLIP_G = TokenizerSpec(key="g", embedding_key="clip_g", embedding_size=1280, pad_with_end=False)


def ids(chunk: list[tuple]) -> list:
    return [pair[0] for pair in chunk]


def weights(chunk: list[tuple]) -> list[float]:
    return [pair[1] for pair in chunk]


def prompt_tokens(chunk: list[tuple]) -> list:
    """A chunk's entries between the start token and the first end token."""
    tokens = ids(chunk)
    assert tokens[0] == START
    return tokens[1:tokens.index(END)] if END in tokens else tokens[1:]


@pytest.mark.parametrize(("text", "expected"), [
    ("a photo of a cat", [320, 1125, 539, 320, 2368]),
    ("A PHOTO  of a\tCat", [320, 1125, 539, 320, 2368]),
    ("masterpiece, best quality", [12066, 267, 949, 3027]),
    ("hello world", [3306, 1002]),
    ("(cat)", [263, 2368, 264]),
    ("supercalifragilisticexpialidocious", [1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466]),
])
def test_bpe_gives_the_real_clip_ids(text: str, expected: list[int]) -> None:
    assert shared_bpe().encode(text) == expected


def test_bpe_wraps_with_start_and_end_and_knows_the_special_tokens() -> None:
    bpe = shared_bpe()
    assert bpe("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert bpe("") == [START, END]
    assert bpe.encode("cat <|endoftext|> dog") == [2368, END, 1929]
    assert len(bpe.encoder) == 49408
    assert bpe.decoder[2368] == "cat</w>"


def test_bpe_handles_non_ascii_text_byte_by_byte() -> None:
    bpe = shared_bpe()
    encoded = bpe.encode("café 日本 😀")
    assert encoded and all(0 <= token < 49406 for token in encoded)
    decoded = "".join(bpe.decoder[token] for token in encoded).replace("</w>", "")
    assert decoded != ""


def test_a_missing_vocabulary_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        ClipBPE(tmp_path / "nothing.txt.gz")


@pytest.mark.parametrize(("text", "expected"), [
    ("a cat", [("a cat", 1.0)]),
    ("a (red:1.2) cat", [("a ", 1.0), ("red", 1.2), (" cat", 1.0)]),
    ("(red)", [("red", 1.1)]),
    ("((red))", [("red", 1.1 * 1.1)]),
    ("(big (red:1.5) cat)", [("big ", 1.1), ("red", 1.5), (" cat", 1.1)]),
    ("(a, b:0.5)", [("a, b", 0.5)]),
    ("(red:x)", [("red:x", 1.1)]),
    ("(:1.5)", [(":1.5", 1.1)]),
    ("[red]", [("[red]", 1.0)]),
    (r"\(red\)", [("(red)", 1.0)]),
    (r"(\(red\):1.3)", [("(red)", 1.3)]),
    ("a (red cat", [("a ", 1.0), ("(red cat", 1.0)]),
    ("a) (red:1.3) cat", [("a) (red:1.3) cat", 1.0)]),
    ("()", []),
])
def test_prompt_weight_syntax_follows_comfyui(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse_prompt_weights(text) == expected


def test_a_short_prompt_is_one_padded_chunk_of_77() -> None:
    chunks = SDTokenizer(CLIP_L, embedding_directory=[]).tokenize_with_weights("a photo of a cat")
    assert len(chunks) == 1
    assert ids(chunks[0]) == [START, 320, 1125, 539, 320, 2368] + [END] * 71
    assert weights(chunks[0]) == [1.0] * 77


def test_openclip_tokenizers_pad_with_zero() -> None:
    chunks = SDTokenizer(CLIP_G, embedding_directory=[]).tokenize_with_weights("a cat")
    assert ids(chunks[0]) == [START, 320, 2368, END] + [0] * 73


def test_weights_reach_the_tokens_of_their_segment() -> None:
    chunks = SDTokenizer(CLIP_L, embedding_directory=[]).tokenize_with_weights("a (red:1.5) cat, [dog]")
    entries = chunks[0][1:7]
    assert entries == [(320, 1.0), (736, 1.5), (2368, 1.0), (267, 1.0), (314, 1.0), (1929, 1.0)]
    assert chunks[0][7] == (316, 1.0)


def test_word_ids_number_each_segment_and_mark_special_tokens_zero() -> None:
    chunks = SDTokenizer(CLIP_L, embedding_directory=[]).tokenize_with_weights("a (red) cat", return_word_ids=True)
    assert chunks[0][:5] == [(START, 1.0, 0), (320, 1.0, 1), (736, 1.1, 2), (2368, 1.0, 3), (END, 1.0, 0)]


def test_long_prompts_make_several_chunks_each_with_start_end_and_padding() -> None:
    tokenizer = SDTokenizer(CLIP_L, embedding_directory=[])
    chunks = tokenizer.tokenize_with_weights("cat " * 200)
    assert [len(chunk) for chunk in chunks] == [77, 77, 77]
    for chunk in chunks:
        assert ids(chunk)[0] == START
    # One segment of 200 tokens is split wherever a chunk is full: 75 + 75 + 50.
    assert [len(prompt_tokens(chunk)) for chunk in chunks] == [75, 75, 50]
    assert ids(chunks[0])[76] == END
    assert ids(chunks[2])[51:] == [END] * 26


def test_a_small_group_that_does_not_fit_moves_whole_to_the_next_chunk() -> None:
    tokenizer = SDTokenizer(CLIP_L, embedding_directory=[])
    # 74 tokens at weight 1, then a weighted segment of 3 tokens: 74 + 3 > 75 and 3 < 8.
    chunks = tokenizer.tokenize_with_weights("cat " * 74 + "(a red dog:1.2)")
    assert len(chunks) == 2
    assert prompt_tokens(chunks[0]) == [2368] * 74
    assert ids(chunks[0])[75:] == [END, END]
    assert prompt_tokens(chunks[1]) == [320, 736, 1929]
    assert weights(chunks[1])[1:4] == [1.2, 1.2, 1.2]


def test_a_large_group_is_split_to_fill_the_chunk() -> None:
    tokenizer = SDTokenizer(CLIP_L, embedding_directory=[])
    chunks = tokenizer.tokenize_with_weights("cat " * 70 + "(" + "dog " * 10 + ":0.8)")
    assert prompt_tokens(chunks[0]) == [2368] * 70 + [1929] * 5
    assert prompt_tokens(chunks[1]) == [1929] * 5
    assert weights(chunks[1])[1:6] == [0.8] * 5


def test_prompt_tokenizer_keys_each_encoder_as_comfyui() -> None:
    sdxl = PromptTokenizer([CLIP_G, CLIP_L], embedding_directory=[])
    tokens = sdxl.tokenize_with_weights("a cat")
    assert list(tokens) == ["g", "l"]
    assert ids(tokens["g"][0])[4] == 0 and ids(tokens["l"][0])[4] == END
    assert sdxl.clip_l.tokenize_with_weights("a cat") == tokens["l"]
    assert sdxl.untokenize(tokens["l"][0][:2]) == [((START, 1.0), "<|startoftext|>"), ((320, 1.0), "a</w>")]
    clone = sdxl.clone()
    assert clone.clip_g is not sdxl.clip_g and clone.tokenize_with_weights("a cat") == tokens


def write_embedding(path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(tensors, str(path))
    else:
        torch.save(tensors, str(path))


def test_embeddings_resolve_from_the_folder_and_its_subfolders(tmp_path) -> None:
    vectors = torch.arange(2 * 768, dtype=torch.float32).reshape(2, 768)
    write_embedding(tmp_path / "styles" / "mystyle.safetensors", {"emb_params": vectors})
    tokenizer = SDTokenizer(CLIP_L, embedding_directory=[str(tmp_path)])
    chunk = tokenizer.tokenize_with_weights("a embedding:mystyle cat", return_word_ids=True)[0]
    assert chunk[1] == (320, 1.0, 1)
    assert torch.equal(chunk[2][0], vectors[0]) and torch.equal(chunk[3][0], vectors[1])
    assert chunk[2][2] == chunk[3][2] == 2
    assert chunk[4] == (2368, 1.0, 3)
    assert ids(chunk)[5] == END


def test_embedding_weights_and_trailing_commas(tmp_path) -> None:
    write_embedding(tmp_path / "style.pt", {"string_to_param": {"*": torch.ones(1, 768)}})
    tokenizer = SDTokenizer(CLIP_L, embedding_directory=str(tmp_path))
    chunk = tokenizer.tokenize_with_weights("(embedding:style, cat:1.3)")[0]
    assert torch.equal(chunk[1][0], torch.ones(768)) and chunk[1][1] == 1.3
    assert chunk[2:4] == [(267, 1.3), (2368, 1.3)]


def test_sdxl_embedding_files_give_each_encoder_its_own_vectors(tmp_path) -> None:
    write_embedding(tmp_path / "both.safetensors", {"clip_l": torch.zeros(1, 768), "clip_g": torch.ones(1, 1280)})
    tokens = PromptTokenizer([CLIP_G, CLIP_L], embedding_directory=[str(tmp_path)]).tokenize_with_weights(
        "embedding:both")
    assert tokens["g"][0][1][0].shape == (1280,) and float(tokens["g"][0][1][0].sum()) == 1280
    assert tokens["l"][0][1][0].shape == (768,) and float(tokens["l"][0][1][0].sum()) == 0


def test_a_missing_embedding_is_dropped_with_a_warning(tmp_path, caplog) -> None:
    tokenizer = SDTokenizer(CLIP_L, embedding_directory=[str(tmp_path)])
    with caplog.at_level(logging.WARNING):
        chunk = tokenizer.tokenize_with_weights("a embedding:nothere cat")[0]
    assert prompt_tokens(chunk) == [320, 2368]
    assert "embedding:nothere" in caplog.text


def test_embeddings_cannot_escape_their_folder(tmp_path) -> None:
    write_embedding(tmp_path / "outside.safetensors", {"emb_params": torch.ones(1, 768)})
    (tmp_path / "embeddings").mkdir()
    assert load_embedding("../outside", [str(tmp_path / "embeddings")], 768, "clip_l") is None


def test_without_an_embeddings_folder_the_text_is_plain() -> None:
    chunk = SDTokenizer(CLIP_L, embedding_directory=None).tokenize_with_weights("embedding:foo")[0]
    assert prompt_tokens(chunk) == [19703, 796, 281, 23435]


REFERENCE = Path(__file__).parent / "data" / "clip_tokenizer_reference.json"


def test_ids_equal_transformers_clip_tokenizer_on_unusual_text() -> None:
    """Ids recorded from transformers' CLIPTokenizer (what ComfyUI runs) on accents, CJK, emoji,
    control characters, contractions and special tokens."""
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    bpe = shared_bpe()
    for text, expected in reference["cases"]:
        assert bpe(text) == expected, text


def test_the_comfy_sd1_clip_names_custom_nodes_import() -> None:
    from comfyui_core_nodes.text_encoders import sd1_clip

    escaped = sd1_clip.escape_important(r"a (b:1.2) \(c\)")
    segments = sd1_clip.token_weights(escaped, 1.0)
    assert [(sd1_clip.unescape_important(text), weight) for text, weight in segments] == \
        [("a ", 1.0), ("b", 1.2), (" (c)", 1.0)]
    assert sd1_clip.parse_parentheses("a (b) c") == ["a ", "(b)", " c"]
    assert sd1_clip.gen_empty_tokens({"start": START, "end": END, "pad": 0}, 5) == [START, END, 0, 0, 0]


def test_embeddings_bundled_in_a_lora_file(tmp_path) -> None:
    write_embedding(tmp_path / "bundle.safetensors", {
        "bundle_emb.style.string_to_param.*": torch.ones(2, 768),
        "lora_unet_down.lora_up.weight": torch.zeros(4, 4)})
    embedding = load_embedding("bundle", [str(tmp_path)], 768, "clip_l")
    assert embedding.shape == (2, 768) and float(embedding.sum()) == 2 * 768
