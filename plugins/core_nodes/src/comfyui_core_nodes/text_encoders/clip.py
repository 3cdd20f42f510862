"""The CLIP object nodes pass around: a tokenizer, the text encoders and the patcher that loads them."""
from __future__ import annotations

from typing import Any, Optional, Union

import torch

from .encoder import ClipStack
from .tokenizer import PromptTokenizer, TokenizedPrompt


class CLIP:
    """ComfyUI's ``comfy.sd.CLIP`` interface over our encoders.

    ``cond_stage_model`` (shared by clones) holds the weights; each clone has its own patcher (LoRA
    patches), last-layer choice and tokenizer options.
    """

    def __init__(self, cond_stage_model: ClipStack, tokenizer: PromptTokenizer, family: str,
                 load_device: torch.device, offload_device: torch.device) -> None:
        from ..model_patcher import ModelPatcher

        self.cond_stage_model = cond_stage_model
        self.tokenizer = tokenizer
        self.family = family
        self.patcher = ModelPatcher(cond_stage_model, load_device=load_device, offload_device=offload_device)
        self.layer_idx: Optional[int] = None
        self.tokenizer_options: dict[str, Any] = {}
        self.use_clip_schedule = False
        self.apply_hooks_to_conds = None

    def clone(self) -> "CLIP":
        clone = CLIP.__new__(CLIP)
        clone.__dict__.update(self.__dict__)
        clone.patcher = self.patcher.clone()
        clone.tokenizer = self.tokenizer.clone()
        clone.tokenizer_options = dict(self.tokenizer_options)
        return clone

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        return self.patcher.add_patches(patches, strength_patch, strength_model)

    def get_key_patches(self) -> dict:
        return self.patcher.get_key_patches()

    def clip_layer(self, layer_idx: Optional[int]) -> None:
        """CLIPSetLastLayer: -1 is the last layer, -2 the penultimate..."""
        self.layer_idx = layer_idx

    def set_tokenizer_option(self, option_name: str, value: Any) -> None:
        self.tokenizer_options[option_name] = value

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs: Any) -> TokenizedPrompt:
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def load_model(self, tokens: Optional[TokenizedPrompt] = None):
        from .. import model_management

        model_management.load_models_gpu([self.patcher])
        return self.patcher

    def encode_from_tokens(self, tokens: TokenizedPrompt, return_pooled: Union[bool, str] = False,
                           return_dict: bool = False):
        """Conditioning for tokenized text; with ``return_pooled`` also the pooled output
        (``"unprojected"`` for the pooled output before text_projection)."""
        model = self.cond_stage_model
        model.reset_clip_options()
        if self.layer_idx is not None:
            model.set_clip_options({"layer": self.layer_idx})
        if return_pooled == "unprojected":
            model.set_clip_options({"projected_pooled": False})
        self.load_model(tokens)
        model.set_clip_options({"execution_device": self.patcher.load_device})
        with torch.no_grad():
            cond, pooled = model.encode_token_weights(tokens)
        if return_dict:
            out = {"cond": cond, "pooled_output": pooled}
            if self.apply_hooks_to_conds:
                out["hooks"] = self.apply_hooks_to_conds
            return out
        if return_pooled:
            return cond, pooled
        return cond

    def encode_from_tokens_scheduled(self, tokens: TokenizedPrompt, unprojected: bool = False,
                                     add_dict: Optional[dict[str, Any]] = None, show_pbar: bool = True) -> list:
        """A CONDITIONING list: ``[[cond, {"pooled_output": pooled, **add_dict}]]``."""
        out = self.encode_from_tokens(tokens, return_pooled="unprojected" if unprojected else True, return_dict=True)
        cond = out.pop("cond")
        out.update(add_dict or {})
        return [[cond, out]]

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_from_tokens(self.tokenize(text))

    def load_sd(self, sd: dict[str, torch.Tensor], full_model: bool = False):
        if full_model:
            return self.cond_stage_model.load_state_dict(sd, strict=False)
        return self.cond_stage_model.load_sd(sd)

    def get_sd(self) -> dict[str, torch.Tensor]:
        """The encoders' weights under ComfyUI's keys (``clip_l.transformer.text_model...``)."""
        return self.cond_stage_model.state_dict()

    def get_ram_usage(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.cond_stage_model.state_dict().values())
