"""Token chunks to conditioning: which layer to use, textual inversions, ComfyUI's prompt-weight math."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .model import ClipTextModel, TextEncoderConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """How one text encoder turns chunks into conditioning (ComfyUI's SDClipModel settings)."""
    key: str                     # tokenized prompt key and module name suffix: "l" -> clip_l
    pad_token: int               # 49407 (CLIP-L) or 0 (OpenCLIP)
    layer_idx: Optional[int]     # None: last layer after the final norm; -2: penultimate...
    normalize_hidden: bool       # apply the final layer norm to an intermediate layer's output
    projected_pooled: bool       # pooled output through text_projection
    start_token: int = 49406
    end_token: int = 49407


class ClipTextEncoder(nn.Module):
    """One CLIP text encoder: ``transformer`` (``text_model.*``, ``text_projection``) and ``logit_scale``."""

    def __init__(self, config: TextEncoderConfig, spec: EncoderSpec, device=None, dtype=None) -> None:
        super().__init__()
        self.spec = spec
        self.transformer = ClipTextModel(config, device=device, dtype=dtype)
        self.logit_scale = nn.Parameter(torch.tensor(4.6055, device=device, dtype=dtype), requires_grad=False)
        self.num_layers = config.layers
        self.special_tokens = {"start": spec.start_token, "end": spec.end_token, "pad": spec.pad_token}
        self.execution_device: Optional[torch.device] = None
        self.reset_clip_options()
        self.requires_grad_(False)
        self.eval()

    # ComfyUI's clip options: "layer" (CLIPSetLastLayer), "projected_pooled", "execution_device".
    def set_clip_options(self, options: dict[str, Any]) -> None:
        layer = options.get("layer", self.layer_idx)
        self.return_projected_pooled = options.get("projected_pooled", self.return_projected_pooled)
        self.execution_device = options.get("execution_device", self.execution_device)
        # An index beyond the encoder's depth means the last layer.
        self.layer_idx = None if layer is None or abs(layer) > self.num_layers else layer

    def reset_clip_options(self) -> None:
        self.layer_idx = self.spec.layer_idx
        self.return_projected_pooled = self.spec.projected_pooled
        self.execution_device = None

    def _embed(self, chunks: Sequence[Sequence[Any]], device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """Token embeddings with textual-inversion vectors in place, and where each chunk pools.

        A chunk pools at its first end token; vectors of the wrong width are dropped and the chunk
        is padded at the end to keep its length.
        """
        token_embedding = self.transformer.get_input_embeddings()
        rows: list[torch.Tensor] = []
        pool_at: list[int] = []
        for chunk in chunks:
            ids = torch.tensor([[t for t in chunk if not torch.is_tensor(t)]], device=device, dtype=torch.long)
            embedded = token_embedding(ids, out_dtype=torch.float32)[0]
            width = embedded.shape[-1]
            pieces: list[torch.Tensor] = []
            next_id = 0
            dropped = 0
            end_position: Optional[int] = None
            for token in chunk:
                if torch.is_tensor(token):
                    if token.shape[-1] != width:
                        logger.warning("WARNING: shape mismatch when trying to apply embedding, embedding will be "
                                       "ignored %s != %s", token.shape[-1], width)
                        dropped += 1
                        continue
                    pieces.append(token.reshape(1, width).to(device=device, dtype=torch.float32))
                else:
                    if end_position is None and int(token) == self.spec.end_token:
                        end_position = len(pieces)
                    pieces.append(embedded[next_id:next_id + 1])
                    next_id += 1
            pool_at.append(len(pieces) - 1 if end_position is None else end_position)
            if dropped:
                pad = torch.full((1, dropped), self.spec.pad_token, device=device, dtype=torch.long)
                pieces.append(token_embedding(pad, out_dtype=torch.float32)[0])
            rows.append(torch.cat(pieces, dim=0))
        return torch.stack(rows), pool_at

    def forward(self, chunks: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning (B, T, W) and pooled output (B, P) for a batch of token chunks."""
        device = self.execution_device
        if device is None:
            device = self.transformer.get_input_embeddings().weight.device
        embeds, pool_at = self._embed(chunks, device)
        out = self.transformer(embeds, pool_at, keep_layer=self.layer_idx, normalize_hidden=self.spec.normalize_hidden)
        cond = out.last if self.layer_idx is None else out.hidden
        pooled = out.projected if self.return_projected_pooled else out.pooled
        return cond.float(), pooled.float()

    def encode(self, chunks: Sequence[Sequence[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self(chunks)

    def gen_empty_tokens(self, length: int) -> list[int]:
        """The empty prompt: start, end, then padding."""
        return [self.spec.start_token, self.spec.end_token] + [self.spec.pad_token] * (length - 2)

    def encode_token_weights(self, token_weight_pairs: Sequence[Sequence[tuple]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunks' conditioning joined along the token axis, and the first chunk's pooled output.

        A token with weight w becomes ``empty + (token - empty) * w``, where ``empty`` is the empty
        prompt's output at the same position (ComfyUI's prompt weighting).
        """
        from .. import model_management

        chunks = [[pair[0] for pair in chunk] for chunk in token_weight_pairs]
        weighted = any(pair[1] != 1.0 for chunk in token_weight_pairs for pair in chunk)
        longest = max((len(chunk) for chunk in chunks), default=0)
        if weighted or not chunks:
            chunks.append(self.gen_empty_tokens(longest or self.transformer.config.positions))
        cond, pooled = self.encode(chunks)
        first_pooled = pooled[0:1].to(model_management.intermediate_device())
        if not token_weight_pairs:
            return cond[-1:].to(model_management.intermediate_device()), first_pooled
        empty = cond[-1]
        outputs = []
        for index, chunk in enumerate(token_weight_pairs):
            z = cond[index:index + 1]
            if weighted:
                weights = torch.tensor([pair[1] for pair in chunk], dtype=z.dtype, device=z.device)
                changed = weights != 1.0
                scaled = (z[0] - empty) * weights.unsqueeze(-1) + empty
                z = torch.where(changed.unsqueeze(-1), scaled, z[0]).unsqueeze(0)
            outputs.append(z)
        return torch.cat(outputs, dim=-2).to(model_management.intermediate_device()), first_pooled

    def load_sd(self, state_dict: dict[str, torch.Tensor]):
        return self.transformer.load_state_dict(state_dict, strict=False)


class ClipStack(nn.Module):
    """A model's text encoders as attributes ``clip_l``/``clip_h``/``clip_g`` (ComfyUI's state-dict keys).

    With two encoders (SDXL) their outputs are joined along the width, CLIP-L first, and the pooled
    output comes from ``pooled_from``.
    """

    def __init__(self, encoders: Sequence[ClipTextEncoder], pooled_from: str) -> None:
        super().__init__()
        self.keys = [encoder.spec.key for encoder in encoders]
        for encoder in encoders:
            self.add_module(f"clip_{encoder.spec.key}", encoder)
        self.pooled_from = pooled_from

    @property
    def dtypes(self) -> set[torch.dtype]:
        return {parameter.dtype for parameter in self.parameters()}

    def encoders(self) -> dict[str, ClipTextEncoder]:
        return {key: getattr(self, f"clip_{key}") for key in self.keys}

    def set_clip_options(self, options: dict[str, Any]) -> None:
        for encoder in self.encoders().values():
            encoder.set_clip_options(options)

    def reset_clip_options(self) -> None:
        for encoder in self.encoders().values():
            encoder.reset_clip_options()

    def encode_token_weights(self, tokens: dict[str, list[list[tuple]]]) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = {key: encoder.encode_token_weights(tokens[key]) for key, encoder in self.encoders().items()}
        conds = [outputs[key][0] for key in self.keys]
        length = min(cond.shape[1] for cond in conds)
        cond = torch.cat([c[:, :length] for c in conds], dim=-1) if len(conds) > 1 else conds[0]
        return cond, outputs[self.pooled_from][1]

    def load_sd(self, state_dict: dict[str, torch.Tensor]):
        """Load one encoder's weights (keys without prefix): bigG by its depth, else the first encoder."""
        encoders = self.encoders()
        target = encoders.get("g") if "text_model.encoder.layers.30.mlp.fc1.weight" in state_dict else None
        return (target or next(iter(encoders.values()))).load_sd(state_dict)
