"""The pretraining recipe: every setting of a run (``Config``), its help written once beside it
(the field's metadata, which the command line shows), the presets, and which settings a resumed
run may change.

The defaults are the paper's ViT-B/16 recipe as the authors' released scripts run it: effective
batch 2048, blr 2e-4, 30 warm-up epochs of 800 (their main_pretrain.py default and README command;
their 84.1), AdamW (0.9, 0.95), weight decay 0.05, clip 3, 224 px crops, decoder depth = encoder
depth, blurred pixel targets.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .data import MAX_IMAGE_PIXELS
from .model import MODEL_SIZES


def setting(default, help: str, **metadata):
    """A ``Config`` field: its default and the one description of it (``--help`` prints it)."""
    return field(default=default, metadata=dict(help=help, **metadata))


@dataclass
class Config:
    """A pretraining run. ``python -m semaim_core.pretrain --help`` lists each setting as a flag."""

    data: str = setting("", "an ImageNet-style folder (train/<class>/*.JPEG) or any folder of images")
    output_dir: str = setting("", "the run directory: config, metrics.jsonl, log.txt, tb/, checkpoints, encoder.pth")
    model: str = setting("semaim_vit_base_patch16", "the encoder size")
    img_size: int = setting(224, "crop size")
    depth: int | None = setting(None, "override the size's encoder depth")
    decoder_depth: int | None = setting(None, "decoder blocks (must divide the depth; default: the depth)")
    drop_path: float = setting(0.0, "stochastic depth rate")
    order: str = setting("semantic", "autoregression order: raster (row-major), snake (the authors' 'raster'), "
                                     "stochastic, similarity, semantic (SemAIM), multi_center")
    attention: str = setting("sorted", "sorted (fast, default) or dense (explicit masks, the reference); the same "
                                       "function")
    similarity_source: str | None = setting(None, "where S comes from (default: online for pixels, teacher for "
                                                  "dino/clip)")
    similarity_precision: str = setting("fp32", "fp32 (the authors', outside autocast) or autocast (faster; the "
                                                "center may move)")
    ema_decay: float = setting(0.999, "EMA similarity encoder: decay at epoch 0 (the authors' ramp: 0.999 -> "
                                      "0.9999 over 100 epochs)")
    ema_decay_end: float = setting(0.9999, "... and after --ema-ramp-epochs")
    ema_ramp_epochs: int = setting(100, "epochs over which the EMA decay ramps linearly")
    order_lambda: float = setting(1e-3, "tie-break scale within a distance shell (the released code: 1e-3; the "
                                        "paper: 0.01)")
    order_smooth: bool = setting(False, "the paper's 3x3 mean filter on S before the argmax (not in the released "
                                        "code)")
    num_centers: int = setting(2, "multi_center: at most this many")
    target: str = setting("pixel", "what is predicted: pixel (blurred, normalized patches), dino or clip teacher "
                                   "tokens")
    pixel_blur: bool = setting(True, "blur the pixel target (9 x 9 Gaussian, sigma 1) before normalizing each patch, "
                                     "as the authors' README runs it; --no-pixel-blur: the paper's ablation without it")
    teacher_weights: str | None = setting(None, "local teacher weights file for dino/clip (README: accepted layouts)")
    teacher_input: str = setting("imagenet", "imagenet (the authors': the ImageNet-normalized crop) or native (the "
                                             "teacher's statistics)")
    batch_size: int = setting(64, "images per process and micro-step")
    accum_iter: int = setting(4, "micro-steps per optimizer step (effective batch = batch size x this x processes)")
    epochs: int = setting(800, "training epochs (the schedule's length)")
    warmup_epochs: int = setting(30, "linear warm-up epochs")
    blr: float = setting(2e-4, "base lr: lr = blr x effective batch / 256")
    lr: float | None = setting(None, "absolute lr (overrides --blr)")
    min_lr: float = setting(0.0, "floor of the cosine schedule")
    weight_decay: float = setting(0.05, "AdamW weight decay (none on biases and norms)")
    betas: tuple[float, float] = setting((0.9, 0.95), "AdamW betas")
    clip_grad: float | None = setting(3.0, "gradient-norm clip (0 or unset: none)")
    dtype: str = setting("bf16", "autocast dtype of the step: bf16, fp16 or fp32")
    compile: bool = setting(False, "torch.compile the model")
    grad_checkpointing: bool = setting(False, "recompute each block's activations in the backward pass (less "
                                              "memory, ~1/3 more compute, the same result)")
    float8: bool = setting(False, "FP8 matmuls in the encoder and decoder blocks (torchao float8; H100-class GPUs, "
                                  "with --compile): faster, not exact, part of the recipe; needs "
                                  "--similarity-precision autocast with the online similarity source")
    device: str = setting("cuda", "cuda or cpu")
    num_workers: int = setting(8, "data-loading processes per process")
    loader: str = setting("torch", "torch: decode and augment in the loader processes (the authors' pipeline); gpu: "
                                   "they read bytes, the device decodes (nvJPEG) and augments: the same crops, pixels "
                                   "within the interpolation's tolerance (docs/fidelity.md)")
    seed: int = setting(0, "seeds initialization, data order, augmentation and tie-breaks")
    save_every: int = setting(1000, "optimizer steps between checkpoints (also at every epoch end)")
    keep: int = setting(3, "checkpoints kept (at least 1)")
    log_every: int = setting(20, "steps between metrics rows")
    resume: str | None = setting("auto", "auto (the newest checkpoint here), none (a new run) or a PATH")
    overwrite: bool = setting(False, "a new run may clear an output dir that holds another run")
    allow_recipe_change: bool = setting(False, "resume although the recipe changed (e.g. a lower lr after a NaN); "
                                               "the changes are recorded in recipe_changes.jsonl")
    skip_unreadable: bool = setting(False, "skip unreadable images (counted) instead of stopping")
    max_image_pixels: int = setting(MAX_IMAGE_PIXELS, "images with more pixels are unreadable (PIL's "
                                                      "decompression-bomb limit; 0: no limit)")
    monitor: tuple[str, str] | None = setting(None, "TRAIN VAL: two folders of class folders (a small labelled "
                                                   "split); the encoder's k-NN top-1 on it and its RankMe are "
                                                   "logged as training runs, without changing it")
    monitor_every: float = setting(0.1, "--monitor every this fraction of the schedule (and at the last step)")
    max_steps: int | None = setting(None, "stop after this many steps (the schedule stays the full one; a later "
                                          "start with a larger value resumes)")

    def model_overrides(self) -> dict:
        """The ``build_model`` arguments this recipe sets beyond the named model size."""
        o = dict(img_size=self.img_size, decoder_depth=self.decoder_depth, drop_path_rate=self.drop_path,
                 order=self.order, attention=self.attention, similarity_source=self.similarity_source,
                 similarity_precision=self.similarity_precision,
                 order_lambda=self.order_lambda, order_smooth=self.order_smooth, num_centers=self.num_centers,
                 target=self.target, pixel_blur=self.pixel_blur, grad_checkpointing=self.grad_checkpointing,
                 float8=self.float8)
        if self.depth is not None:
            o["depth"] = self.depth
        if self.target != "pixel":
            o["teacher"] = dict(weights=self.teacher_weights, input_norm=self.teacher_input)
        return o


PRESETS = {
    **{size: dict(model=f"semaim_vit_{size}_patch16") for size in MODEL_SIZES},
    "base_400ep": dict(model="semaim_vit_base_patch16", epochs=400),  # the paper's shorter row (83.8)
    # a few minutes on a CPU with the bundled images
    "demo": dict(model="semaim_vit_tiny_patch16", img_size=96, depth=4, decoder_depth=4, batch_size=16,
                 accum_iter=1, epochs=6, warmup_epochs=1, blr=1.5e-3, dtype="fp32", num_workers=2, save_every=20,
                 log_every=1, device="cpu"),
}

# Settings that do not change what is trained (a resume may change them), and where to stop.
OPERATIONAL = ("output_dir", "resume", "overwrite", "allow_recipe_change", "num_workers", "log_every", "save_every",
               "keep", "compile", "grad_checkpointing", "device", "max_image_pixels", "monitor", "monitor_every")
STOPPING = ("max_steps",)


def choices() -> dict:
    """The settings that take one of a few names, and those names."""
    from .gpu_loader import LOADERS
    from .model import ATTENTION, MODELS, SIMILARITY_PRECISIONS, SIMILARITY_SOURCES
    from .orders import ORDERS
    from .targets import TEACHER_INPUTS, TEACHERS

    return dict(model=sorted(MODELS), order=ORDERS, attention=ATTENTION, similarity_source=SIMILARITY_SOURCES,
                similarity_precision=SIMILARITY_PRECISIONS, target=("pixel", *TEACHERS), teacher_input=TEACHER_INPUTS,
                dtype=("bf16", "fp16", "fp32"), loader=LOADERS)
