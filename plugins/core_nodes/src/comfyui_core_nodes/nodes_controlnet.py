"""ControlNet nodes: attach a ControlNet / T2I-Adapter with its hint image to conditionings; set a union
ControlNet's kind of hint."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

Conditioning = list[list[Any]]

# xinsir's union ControlNets: the kinds of hint SetUnionControlNetType offers, each one's index in the file's task
# embedding (the first six are the original union model's, all eight the ProMax model's).
UNION_CONTROLNET_TYPES = {"openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2,
                          "canny/lineart/anime_lineart/mlsd": 3, "normal": 4, "segment": 5, "tile": 6, "repaint": 7}


class ControlNetApply:
    """The old node: one conditioning, the control applied to the negative side as well."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"conditioning": ("CONDITIONING",), "control_net": ("CONTROL_NET",), "image": ("IMAGE",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"
    CATEGORY = "conditioning/controlnet"
    DEPRECATED = True

    def apply_controlnet(self, conditioning: Conditioning, control_net: Any, image: torch.Tensor,
                         strength: float) -> tuple[Conditioning]:
        if strength == 0:
            return (conditioning,)
        hint = image.movedim(-1, 1)
        out = []
        for tensor, options in conditioning:
            options = options.copy()
            control = control_net.copy().set_cond_hint(hint, strength)
            if "control" in options:
                control.set_previous_controlnet(options["control"])
            options["control"] = control
            options["control_apply_to_uncond"] = True
            out.append([tensor, options])
        return (out,)


class ControlNetApplyAdvanced:
    @classmethod
    def INPUT_TYPES(cls) -> dict:
        percent = {"min": 0.0, "max": 1.0, "step": 0.001}
        return {"required": {"positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "control_net": ("CONTROL_NET",), "image": ("IMAGE",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                             "start_percent": ("FLOAT", {"default": 0.0, **percent}),
                             "end_percent": ("FLOAT", {"default": 1.0, **percent})},
                "optional": {"vae": ("VAE",)}}

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"
    CATEGORY = "conditioning/controlnet"

    def apply_controlnet(self, positive: Conditioning, negative: Conditioning, control_net: Any, image: torch.Tensor,
                         strength: float, start_percent: float, end_percent: float, vae: Optional[Any] = None,
                         extra_concat: Optional[list] = None) -> tuple[Conditioning, Conditioning]:
        if strength == 0:
            return positive, negative
        hint = image.movedim(-1, 1)
        # One control per previous control, shared by positive and negative, so chains stay aligned.
        controls: dict[int, Any] = {}
        outputs = []
        for conditioning in (positive, negative):
            out = []
            for tensor, options in conditioning:
                options = options.copy()
                previous = options.get("control")
                key = id(previous)
                if key not in controls:
                    control = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent), vae=vae,
                                                              extra_concat=extra_concat or [])
                    control.set_previous_controlnet(previous)
                    controls[key] = control
                options["control"] = controls[key]
                options["control_apply_to_uncond"] = False
                out.append([tensor, options])
            outputs.append(out)
        return outputs[0], outputs[1]


class SetUnionControlNetType:
    """Tells a union ControlNet what kind of hint it gets ("auto": let it work that out)."""
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"control_net": ("CONTROL_NET",), "type": (["auto"] + list(UNION_CONTROLNET_TYPES),)}}

    CATEGORY = "conditioning/controlnet"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "set_controlnet_type"

    def set_controlnet_type(self, control_net: Any, type: str) -> tuple[Any]:
        control_net = control_net.copy()
        control_net.set_extra_arg("control_type", [UNION_CONTROLNET_TYPES[type]] if type in UNION_CONTROLNET_TYPES
                                  else [])
        return (control_net,)


NODE_CLASS_MAPPINGS = {
    "ControlNetApply": ControlNetApply,
    "ControlNetApplyAdvanced": ControlNetApplyAdvanced,
    "SetUnionControlNetType": SetUnionControlNetType,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ControlNetApply": "Apply ControlNet (OLD)",
    "ControlNetApplyAdvanced": "Apply ControlNet",
}
