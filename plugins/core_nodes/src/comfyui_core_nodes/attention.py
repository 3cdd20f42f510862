"""Attention implementations (PyTorch SDPA, split, sub-quadratic, SageAttention, FlashAttention) and the choice.

Each takes ``(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False)``
with q/k/v as (batch, tokens, heads * dim_head), or (batch, heads, tokens, dim_head) with ``skip_reshape``.
They are registered through ``comfyui_register_attention``; ``optimized_attention`` calls the one the
options name, else the registered one with the highest priority (``comfy.attention.choose_attention``),
so another plugin can contribute a faster one.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import threading
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from comfyui_core_nodes import model_management
from comfyui_core_nodes.options import option

logger = logging.getLogger(__name__)

AttentionFunction = Callable[..., torch.Tensor]


def attention_precision(attn_precision: Optional[torch.dtype], dtype: torch.dtype) -> Optional[torch.dtype]:
    """The dtype attention scores are computed in: a model's request, overridden by the upcast options."""
    if option("dont_upcast_attention"):
        return None
    forced = model_management.force_upcast_attention_dtype()
    if forced is not None and dtype in forced:
        return forced[dtype]
    return attn_precision


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, n, h*d) -> (b*h, n, d)."""
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).permute(0, 2, 1, 3).reshape(b * heads, n, inner // heads)


def _to_batch_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                    skip_reshape: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    if skip_reshape:
        b, _, _, dim_head = q.shape
        return (q.reshape(b * heads, -1, dim_head), k.reshape(b * heads, -1, dim_head),
                v.reshape(b * heads, -1, dim_head), b, dim_head)
    b, _, inner = q.shape
    return (_split_heads(q, heads).contiguous(), _split_heads(k, heads).contiguous(),
            _split_heads(v, heads).contiguous(), b, inner // heads)


def _from_batch_heads(out: torch.Tensor, b: int, heads: int, dim_head: int, skip_output_reshape: bool) -> torch.Tensor:
    out = out.reshape(b, heads, -1, dim_head)
    if skip_output_reshape:
        return out
    return out.permute(0, 2, 1, 3).reshape(b, -1, heads * dim_head)


def _expand_mask(mask: torch.Tensor, b: int, heads: int) -> torch.Tensor:
    """An additive mask of (q, k), (b, q, k) or (b, h, q, k) as (b*h, q, k)."""
    batch = 1 if mask.ndim == 2 else mask.shape[0]
    return mask.reshape(batch, -1, mask.shape[-2], mask.shape[-1]).expand(b, heads, -1, -1).reshape(
        -1, mask.shape[-2], mask.shape[-1])


def attention_basic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None,
                    attn_precision: Optional[torch.dtype] = None, skip_reshape: bool = False,
                    skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """Plain softmax(QK^T)V in one piece."""
    attn_precision = attention_precision(attn_precision, q.dtype)
    q, k, v, b, dim_head = _to_batch_heads(q, k, v, heads, skip_reshape)
    scale = dim_head ** -0.5
    if attn_precision == torch.float32:
        scores = torch.bmm(q.float(), k.float().transpose(1, 2)) * scale
    else:
        scores = torch.bmm(q, k.transpose(1, 2)) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            keep = mask.reshape(mask.shape[0], -1).repeat_interleave(heads, dim=0)[:, None, :]
            scores.masked_fill_(~keep, -torch.finfo(scores.dtype).max)
        else:
            scores = scores + _expand_mask(mask, b, heads)
    out = torch.bmm(scores.softmax(dim=-1).to(v.dtype), v)
    return _from_batch_heads(out, b, heads, dim_head, skip_output_reshape)


def attention_pytorch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                      mask: Optional[torch.Tensor] = None, attn_precision: Optional[torch.dtype] = None,
                      skip_reshape: bool = False, skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """torch's scaled_dot_product_attention (flash / memory-efficient kernels where available)."""
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        while mask.ndim < 4:
            mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    if skip_output_reshape:
        return out
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)


def attention_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None,
                    attn_precision: Optional[torch.dtype] = None, skip_reshape: bool = False,
                    skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """Attention computed in slices of queries small enough for the free memory."""
    attn_precision = attention_precision(attn_precision, q.dtype)
    q, k, v, b, dim_head = _to_batch_heads(q, k, v, heads, skip_reshape)
    scale = dim_head ** -0.5
    upcast = attn_precision == torch.float32
    element_size = 4 if upcast else q.element_size()
    needed = q.shape[0] * q.shape[1] * k.shape[1] * element_size * 3
    free = model_management.get_free_memory(q.device)
    steps = 1 if needed <= free else 2 ** math.ceil(math.log2(needed / free))
    if steps > 64:
        raise RuntimeError(f"Not enough memory for attention over {q.shape[1]} tokens: needs about "
                           f"{needed / 64 / 2 ** 30:.1f} GB free, {free / 2 ** 30:.1f} GB is")
    if mask is not None:
        mask = _expand_mask(mask, b, heads)
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], device=q.device, dtype=q.dtype)
    slice_size = q.shape[1] // steps if q.shape[1] % steps == 0 else q.shape[1]
    for start in range(0, q.shape[1], slice_size):
        end = start + slice_size
        if upcast:
            scores = torch.bmm(q[:, start:end].float(), k.float().transpose(1, 2)) * scale
        else:
            scores = torch.bmm(q[:, start:end], k.transpose(1, 2)) * scale
        if mask is not None:
            scores += mask if mask.shape[1] == 1 else mask[:, start:end]
        out[:, start:end] = torch.bmm(scores.softmax(dim=-1).to(v.dtype), v)
    return _from_batch_heads(out, b, heads, dim_head, skip_output_reshape)


def _chunk_scores(query: torch.Tensor, key_t: torch.Tensor, scale: float, upcast: bool) -> torch.Tensor:
    if upcast:
        query, key_t = query.float(), key_t.float()
    return torch.baddbmm(torch.empty(1, 1, 1, device=query.device, dtype=query.dtype), query, key_t,
                         alpha=scale, beta=0)


def _sub_quad(query: torch.Tensor, key_t: torch.Tensor, value: torch.Tensor, query_chunk: int, kv_chunk: int,
              upcast: bool, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Chunked attention with an online softmax over key chunks (memory O(sqrt(n)))."""
    scale = query.shape[-1] ** -0.5
    k_tokens = key_t.shape[-1]
    outputs = []
    for q_start in range(0, query.shape[1], query_chunk):
        q = query[:, q_start:q_start + query_chunk]
        q_mask = None
        if mask is not None:
            q_mask = mask if mask.shape[1] == 1 else mask[:, q_start:q_start + query_chunk]
        if k_tokens <= kv_chunk:
            scores = _chunk_scores(q, key_t, scale, upcast)
            if q_mask is not None:
                scores += q_mask
            outputs.append(torch.bmm(scores.softmax(dim=-1).to(value.dtype), value))
            continue
        values, weights, maxima = [], [], []
        for k_start in range(0, k_tokens, kv_chunk):
            scores = _chunk_scores(q, key_t[:, :, k_start:k_start + kv_chunk], scale, upcast)
            chunk_max = scores.amax(dim=-1, keepdim=True).detach()
            scores -= chunk_max
            if q_mask is not None:
                scores += q_mask[:, :, k_start:k_start + kv_chunk]
            exp_weights = torch.exp(scores).to(value.dtype)
            values.append(torch.bmm(exp_weights, value[:, k_start:k_start + kv_chunk]))
            weights.append(exp_weights.sum(dim=-1))
            maxima.append(chunk_max.squeeze(-1))
        stacked_max = torch.stack(maxima)
        correction = torch.exp(stacked_max - stacked_max.amax(dim=0, keepdim=True))
        total_values = (torch.stack(values) * correction.unsqueeze(-1)).sum(dim=0)
        total_weights = (torch.stack(weights) * correction).unsqueeze(-1).sum(dim=0)
        outputs.append(total_values / total_weights)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def _transposed_key(k: torch.Tensor, heads: int, skip_reshape: bool) -> torch.Tensor:
    """Keys as (batch * heads, dim_head, tokens), laid out as ComfyUI's reshapes leave them, since BLAS picks
    its kernel by layout: a contiguous copy when heads are split out of the channels, a transposed view
    when there is a single head or the heads come split already (``skip_reshape``)."""
    if skip_reshape:
        b, _, _, dim_head = k.shape
        return k.reshape(b * heads, -1, dim_head).movedim(1, 2)
    b, _, inner = k.shape
    return k.reshape(b, -1, heads, inner // heads).permute(0, 2, 3, 1).reshape(b * heads, inner // heads, -1)


def attention_sub_quad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                       mask: Optional[torch.Tensor] = None, attn_precision: Optional[torch.dtype] = None,
                       skip_reshape: bool = False, skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """Sub-quadratic attention (Rabe & Staats), chunked to the free memory."""
    attn_precision = attention_precision(attn_precision, q.dtype)
    dtype = q.dtype
    key_t = _transposed_key(k, heads, skip_reshape)
    q, _, v, b, dim_head = _to_batch_heads(q, k, v, heads, skip_reshape)
    upcast = attn_precision == torch.float32 and dtype != torch.float32
    bytes_per_token = 4 if upcast else torch.finfo(dtype).bits // 8
    batch_x_heads, _, k_tokens = q.shape[0], q.shape[1], key_t.shape[2]
    free = model_management.get_free_memory(q.device)
    query_chunk, kv_chunk = 512, int(math.sqrt(k_tokens))
    for size in (4096, 2048, 1024, 512, 256):
        if free / (batch_x_heads * bytes_per_token * size * 4.0) >= k_tokens:
            query_chunk, kv_chunk = size, k_tokens
            break
    if mask is not None:
        mask = _expand_mask(mask, b, heads)
    out = _sub_quad(q, key_t, v, query_chunk, max(1, min(kv_chunk, k_tokens)), upcast, mask).to(dtype)
    return _from_batch_heads(out, b, heads, dim_head, skip_output_reshape)


def attention_sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None,
                   attn_precision: Optional[torch.dtype] = None, skip_reshape: bool = False,
                   skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """SageAttention's quantized kernels (CUDA, fp16/bf16); SDPA where they cannot run."""
    from sageattention import sageattn

    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return attention_pytorch(q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape)
    if skip_reshape:
        b, _, _, dim_head = q.shape
        layout = "HND"
    else:
        b, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(b, -1, heads, dim_head) for t in (q, k, v))
        layout = "NHD"
    if mask is not None:
        while mask.ndim < 4:
            mask = mask.unsqueeze(0) if mask.ndim == 2 else mask.unsqueeze(1)
    out = sageattn(q, k, v, attn_mask=mask, is_causal=False, tensor_layout=layout)
    if layout == "HND":
        return out if skip_output_reshape else out.transpose(1, 2).reshape(b, -1, heads * dim_head)
    return out.transpose(1, 2) if skip_output_reshape else out.reshape(b, -1, heads * dim_head)


def attention_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None,
                    attn_precision: Optional[torch.dtype] = None, skip_reshape: bool = False,
                    skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    """FlashAttention 2 (CUDA, fp16/bf16, no mask); SDPA where it cannot run."""
    from flash_attn import flash_attn_func

    if mask is not None or q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return attention_pytorch(q, k, v, heads, mask, attn_precision, skip_reshape, skip_output_reshape)
    if skip_reshape:
        b, _, _, dim_head = q.shape
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    else:
        b, _, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.view(b, -1, heads, dim_head) for t in (q, k, v))
    out = flash_attn_func(q, k, v, dropout_p=0.0, causal=False)
    return out.transpose(1, 2) if skip_output_reshape else out.reshape(b, -1, heads * dim_head)


# name -> (function, option that selects it, python package it needs)
IMPLEMENTATIONS: dict[str, tuple[AttentionFunction, str, Optional[str]]] = {
    "pytorch": (attention_pytorch, "use_pytorch_cross_attention", None),
    "sub_quad": (attention_sub_quad, "use_quad_cross_attention", None),
    "split": (attention_split, "use_split_cross_attention", None),
    "sage": (attention_sage, "use_sage_attention", "sageattention"),
    "flash": (attention_flash, "use_flash_attention", "flash_attn"),
}


def available_implementations() -> dict[str, tuple[AttentionFunction, int]]:
    """Our implementations whose packages are installed, with their priority on this device.

    SDPA leads on CUDA and XPU; elsewhere sub-quadratic does, as in ComfyUI, which keeps CPU and MPS
    results identical to its. Sage and Flash are used only when an option asks for them.
    """
    sdpa_first = model_management.pytorch_attention_enabled()
    priorities = {"pytorch": 10 if sdpa_first else 2, "sub_quad": 5, "split": 1, "sage": 0, "flash": 0}
    return {name: (function, priorities[name]) for name, (function, _, package) in IMPLEMENTATIONS.items()
            if package is None or importlib.util.find_spec(package) is not None}


def register_implementations(register: Callable[..., None]) -> None:
    for name, (function, priority) in available_implementations().items():
        register(name, function, priority=priority)


_choice_lock = threading.Lock()
_chosen: Optional[AttentionFunction] = None


def _configured_name() -> Optional[str]:
    for name, (_, flag, package) in IMPLEMENTATIONS.items():
        if option(flag):
            if package is not None and importlib.util.find_spec(package) is None:
                logger.warning("--%s needs the %s package, which is not installed; using the default attention",
                               flag.replace("_", "-"), package)
                return None
            return name
    return None


def chosen_attention() -> AttentionFunction:
    """The attention the diffusion model uses: the one the options name, else the top registered one."""
    global _chosen
    with _choice_lock:
        if _chosen is None:
            from comfy.attention import attention_implementations, choose_attention
            from comfy.plugins import get_plugin_manager

            name = _configured_name()
            pm = get_plugin_manager()
            registered = attention_implementations(pm)
            if registered and (name is None or name in registered):
                _chosen = choose_attention(pm, name).function
            else:
                # This plugin is in use without being registered on the process plugin manager.
                ours = available_implementations()
                name = name if name in ours else max(ours, key=lambda key: ours[key][1])
                _chosen = ours[name][0]
            logger.debug("attention: %s", getattr(_chosen, "__name__", _chosen))
        return _chosen


def reset_choice() -> None:
    global _chosen
    with _choice_lock:
        _chosen = None


def optimized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        mask: Optional[torch.Tensor] = None, attn_precision: Optional[torch.dtype] = None,
                        skip_reshape: bool = False, skip_output_reshape: bool = False, **kwargs: Any) -> torch.Tensor:
    transformer_options = kwargs.get("transformer_options") or {}
    override = transformer_options.get("optimized_attention_override")
    function = chosen_attention()
    if override is not None:
        return override(function, q, k, v, heads, mask=mask, attn_precision=attn_precision,
                        skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape, **kwargs)
    return function(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                    skip_output_reshape=skip_output_reshape)


optimized_attention_masked = optimized_attention


def optimized_attention_for_device(device: Any, mask: bool = False, small_input: bool = False) -> AttentionFunction:
    """ComfyUI's pick for text encoders and other small inputs."""
    if small_input:
        return attention_pytorch if model_management.pytorch_attention_enabled() else attention_basic
    if getattr(device, "type", None) == "cpu":
        return attention_sub_quad
    return optimized_attention


# -- the VAE's single-head attention over (b, c, h, w) feature maps ----------------------------------

def _vae_slice_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (b, hw, c), k (b, c, hw), v (b, c, hw) -> (b, c, hw), sliced over queries to fit memory."""
    out = torch.zeros_like(k, device=q.device)
    scale = int(q.shape[-1]) ** -0.5
    needed = q.shape[0] * q.shape[1] * k.shape[2] * q.element_size() * (3 if q.element_size() == 2 else 2.5)
    free = model_management.get_free_memory(q.device)
    steps = 1 if needed <= free else 2 ** math.ceil(math.log2(needed / free))
    slice_size = q.shape[1] // steps if q.shape[1] % steps == 0 else q.shape[1]
    for start in range(0, q.shape[1], slice_size):
        end = start + slice_size
        weights = torch.softmax(torch.bmm(q[:, start:end], k) * scale, dim=2).permute(0, 2, 1)
        out[:, :, start:end] = torch.bmm(v, weights)
    return out


def vae_attention_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, c = q.shape[:2]
    shape = q.shape
    return _vae_slice_attention(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1),
                                v.reshape(b, c, -1)).reshape(shape)


def vae_attention_pytorch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, c = q.shape[:2]
    shape = q.shape
    q, k, v = (t.view(b, 1, c, -1).transpose(2, 3).contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
    return out.transpose(2, 3).reshape(shape)


def vae_attention() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    return vae_attention_pytorch if model_management.pytorch_attention_enabled_vae() else vae_attention_split


__all__ = ["IMPLEMENTATIONS", "attention_basic", "attention_flash", "attention_precision", "attention_pytorch",
           "attention_sage", "attention_split", "attention_sub_quad", "available_implementations",
           "chosen_attention", "optimized_attention", "optimized_attention_for_device", "optimized_attention_masked",
           "register_implementations", "reset_choice", "vae_attention"]
