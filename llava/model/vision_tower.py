"""The frozen CLIP vision tower: penultimate-layer patch features, as LLaVA-1.5 uses them."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel


class CLIPVisionTower(nn.Module):
    """Wraps transformers' CLIPVisionModel. Works for any CLIP vision config (ViT-L/14-336 gives 576 tokens)."""

    def __init__(self, vision_config: CLIPVisionConfig | dict, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if isinstance(vision_config, dict):
            vision_config = CLIPVisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.vision_tower = CLIPVisionModel(vision_config)
        self.vision_tower.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str, select_layer: int = -2, select_feature: str = "patch", **kwargs) -> CLIPVisionTower:
        tower = cls.__new__(cls)
        nn.Module.__init__(tower)
        tower.select_layer, tower.select_feature = select_layer, select_feature
        tower.vision_tower = CLIPVisionModel.from_pretrained(path, **kwargs)
        tower.vision_tower.requires_grad_(False)
        return tower

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config

    @property
    def num_patches(self) -> int:
        n = (self.config.image_size // self.config.patch_size) ** 2
        return n + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] -> [B, N_v, D_v]
        dtype = next(self.vision_tower.parameters()).dtype
        with torch.no_grad():  # frozen in LLaVA-1.5: never trained
            out = self.vision_tower(images.to(dtype=dtype), output_hidden_states=True)
            feats = out.hidden_states[self.select_layer]
            if self.select_feature == "patch":
                feats = feats[:, 1:]
        return feats.to(images.dtype)
