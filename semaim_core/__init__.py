"""SemAIM pretraining: the model, its orders and targets, the trainer and checkpoint handling.

    from semaim_core import load_encoder
    encoder = load_encoder("runs/semaim_b/encoder.safetensors")
    tokens = encoder.forward_features(images)   # B x (1 + N) x D, after the final norm (as timm)
    feature = encoder.pooled_features(images)   # B x D, as the suite's k-NN and probes pool
"""
from .export import load_encoder
from .model import MODEL_SIZES, MODELS, SemAIM, SemAIMOutput, build_model

__all__ = ["SemAIM", "SemAIMOutput", "MODELS", "MODEL_SIZES", "build_model", "load_encoder"]
