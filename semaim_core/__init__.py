"""SemAIM pretraining: the model, its orders and targets, the trainer and checkpoint handling."""
from .model import SemAIM, SemAIMOutput

# Encoder sizes (ViT, patch 16); the decoder has the encoder's width and, by default, its depth.
MODEL_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
MODELS = {f"semaim_vit_{size}_patch16": cfg for size, cfg in MODEL_SIZES.items()}


def build_model(name: str = "semaim_vit_base_patch16", **overrides) -> SemAIM:
    """``build_model("semaim_vit_base_patch16", img_size=224, order="semantic", attention="sorted", ...)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}': choose one of {', '.join(MODELS)}")
    return SemAIM(**{"patch_size": 16, **MODELS[name], **overrides})


__all__ = ["SemAIM", "SemAIMOutput", "MODELS", "MODEL_SIZES", "build_model"]
