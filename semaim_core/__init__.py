"""SemAIM pretraining: the model, its orders and targets, the trainer and checkpoint handling."""
from .model import MODEL_SIZES, MODELS, SemAIM, SemAIMOutput, build_model

__all__ = ["SemAIM", "SemAIMOutput", "MODELS", "MODEL_SIZES", "build_model"]
