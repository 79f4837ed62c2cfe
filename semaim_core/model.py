"""SemAIM: semantic-aware autoregressive image modeling (Song et al., AAAI 2024).

A ViT encoder (timm/MAE parameter names) runs over [CLS] + patches where each patch sees only the
patches predicted before it (and itself); a parallel decoder of cross-attention blocks predicts
every patch from [CLS] and the patches strictly before it. Which patch comes first is decided per
image by an order score C (``semaim_core.orders``); the default is the semantic order, built from
the similarity of [CLS] to every patch in an unmasked pass of the same encoder.

Two attention implementations compute the same function:

* ``"sorted"`` (default): tokens are gathered into the order of C, so the encoder mask becomes the
  plain causal mask and the decoder mask "query k sees sorted keys 0..k" over [CLS] + the first
  N - 1 sorted patches. Both run through ``scaled_dot_product_attention(is_causal=True)``
  (flash / memory-efficient kernels), with no N x N mask in memory.
* ``"dense"``: tokens stay in raster order with explicit boolean masks built from C: the paper's
  formulation, kept as the reference that the tests compare against.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from . import orders
from .targets import FeatureTarget, PixelTarget

ATTENTION = ("sorted", "dense")
SIMILARITY_SOURCES = ("online", "ema", "teacher")
# "fp32": the similarity pass runs outside the step's autocast, as the authors' does (exact).
# "autocast": it runs in the step's mixed precision: faster, and the chosen center may move.
SIMILARITY_PRECISIONS = ("fp32", "autocast")
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2D sin-cos table, (1 + N) x dim with a zero [CLS] slot, in MAE's channel layout
    (the first half encodes the column, the second the row) and arithmetic (float64 numpy), so a
    regenerated table equals the one stored in MAE and SemAIM checkpoints."""
    if dim % 4:
        raise ValueError(f"embed dim {dim} must be divisible by 4 for 2D sin-cos position embeddings")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    rows, cols = np.meshgrid(np.arange(grid[0], dtype=np.float32), np.arange(grid[1], dtype=np.float32), indexing="ij")

    def embed(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed(cols), embed(rows)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def eval_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """timm ``Block.forward`` without stochastic depth: the eval-mode result in any mode, so the
    no-grad similarity pass needs no train/eval switch (which would break a compiled graph)."""
    x = x + block.ls1(block.attn(block.norm1(x)))
    return x + block.ls2(block.mlp(block.norm2(x)))


class DecoderBlock(nn.Module):
    """Cross-attention block: queries attend to encoder states; one LayerNorm serves both inputs."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, g, h, attn_mask=None, is_causal=False):
        q = _split_heads(self.q(self.norm1(g)), self.num_heads)
        k, v = (_split_heads(t, self.num_heads) for t in self.kv(self.norm1(h)).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        g = g + self.drop_path(self.proj(_merge_heads(out)))
        return g + self.drop_path(self.mlp(self.norm2(g)))


def dense_masks(order_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's masks as boolean B x 1 x Q x K tensors (True = may attend), [CLS] first.

    Encoder: patch i sees [CLS] and every patch j with C_j <= C_i (itself included); [CLS] sees
    only itself. Decoder: the query of patch i sees [CLS] and the patches with C_j < C_i."""
    c = order_scores
    cf = torch.cat([c.new_full((c.shape[0], 1), float("-inf")), c], dim=1)  # [CLS] = -inf
    encoder = cf[:, None, :] <= cf[:, :, None]
    decoder = cf[:, None, :] < c[:, :, None]
    return encoder[:, None], decoder[:, None]


@dataclass
class SemAIMOutput:
    loss: torch.Tensor            # scalar, mean over images and patches
    patch_loss: torch.Tensor      # B x N, raster patch order
    order_scores: torch.Tensor    # B x N score C that was used (smaller = earlier)
    similarity: torch.Tensor | None  # B x N similarity map S, when the order needed one


class SemAIM(nn.Module):
    """SemAIM: a ViT encoder and a decoder that predicts each patch's target from the patches before
    it in an order built per image (the semantic order: from the patch most similar to the others
    outwards), with the encoder in timm / MAE names so that its export loads into timm, detectron2
    and mmseg. ``forward(images)`` returns a ``SemAIMOutput``.

    Args:
        img_size (int): input size (square); other sizes of a multiple of ``patch_size`` also run.
            Default 224.
        patch_size (int): patch side. Default 16.
        in_chans (int): input channels. Default 3.
        embed_dim (int): width of the encoder and decoder. Default 768 (ViT-B).
        depth (int): encoder blocks. Default 12.
        num_heads (int): attention heads per block. Default 12.
        decoder_depth (int | None): decoder blocks; must divide ``depth`` (decoder block k cross-attends
            to the output of encoder block (k + 1) x depth / decoder_depth - 1). Default: ``depth``.
        mlp_ratio (float): MLP hidden width / ``embed_dim``. Default 4.0.
        drop_path_rate (float): stochastic depth, linear over the blocks. Default 0.0.
        order (str): the autoregression order, one of ``orders.ORDERS``: raster, snake, stochastic,
            similarity, semantic, multi_center. Default "semantic".
        attention (str): "sorted" (patches sorted by the order, causal attention; fast) or "dense"
            (explicit masks in raster order; the reference). Both compute the same function.
            Default "sorted".
        similarity_source (str | None): where the similarity map S the order starts from comes
            from: "online" (this encoder, no gradient), "ema" (an EMA copy of it) or "teacher" (the
            target teacher). Default: "online" for the pixel target, "teacher" for dino / clip.
        similarity_precision (str): "fp32" (the authors': the similarity pass outside autocast) or
            "autocast" (the step's mixed precision; faster, the center may move). Default "fp32".
        order_lambda (float): tie-break scale within a distance shell of the center (the released
            code: 1e-3; the paper writes 0.01). Default 1e-3.
        order_smooth (bool): the paper's 3x3 mean filter on S before the argmax (not in the
            released code). Default False.
        num_centers (int): multi_center: at most this many centers. Default 2.
        target (str): what is predicted: "pixel" (normalized patches), "dino" or "clip" (teacher
            tokens). Default "pixel".
        pixel_blur (bool): blur the pixel target (9 x 9 Gaussian, sigma 1) first, as the authors'
            README runs it. Default True.
        teacher (dict | None): for dino / clip: ``weights`` (a local file) and ``input_norm``
            ("imagenet" or "native"). Default None.
        grad_checkpointing (bool): recompute each block's activations in the backward pass (less
            memory, the same loss and gradients). Default False.
        float8 (bool): FP8 matmuls in the blocks through torchao (not exact; needs
            ``similarity_precision="autocast"`` with the online source). Default False.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, decoder_depth: int | None = None, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, order: str = "semantic", attention: str = "sorted",
                 similarity_source: str | None = None, similarity_precision: str = "fp32",
                 order_lambda: float = 1e-3, order_smooth: bool = False, num_centers: int = 2,
                 target: str = "pixel", pixel_blur: bool = True, teacher: dict | None = None,
                 grad_checkpointing: bool = False,
                 float8: bool = False):
        super().__init__()
        decoder_depth = depth if decoder_depth is None else decoder_depth
        # the authors take the order's similarity from the teacher whenever the target is a teacher's
        similarity_source = similarity_source or ("online" if target == "pixel" else "teacher")
        if order not in orders.ORDERS:
            raise ValueError(f"unknown order '{order}': choose one of {', '.join(orders.ORDERS)}")
        if attention not in ATTENTION:
            raise ValueError(f"unknown attention '{attention}': choose 'sorted' or 'dense'")
        if similarity_source not in SIMILARITY_SOURCES:
            raise ValueError(f"unknown similarity_source '{similarity_source}': choose one of {SIMILARITY_SOURCES}")
        if similarity_precision not in SIMILARITY_PRECISIONS:
            raise ValueError(f"unknown similarity_precision '{similarity_precision}': "
                             f"choose one of {SIMILARITY_PRECISIONS}")
        if decoder_depth < 1 or depth % decoder_depth:
            raise ValueError(f"decoder_depth ({decoder_depth}) must divide the encoder depth ({depth})")
        if similarity_source == "teacher" and target == "pixel":
            raise ValueError("similarity_source='teacher' needs a feature target (target='dino' or 'clip')")
        if float8 and similarity_source == "online" and similarity_precision == "fp32":
            raise ValueError("float8 computes the encoder blocks' matmuls in FP8, and the online similarity pass "
                             "runs through those blocks, so it cannot stay fp32: add similarity_precision="
                             "'autocast' (--similarity-precision autocast), or use similarity_source='ema'")
        self.patch_size, self.order, self.attention = patch_size, order, attention
        self.similarity_source, self.similarity_precision = similarity_source, similarity_precision
        self.order_lambda, self.order_smooth, self.num_centers = order_lambda, order_smooth, num_centers
        self.grad_checkpointing = grad_checkpointing
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, decoder_depth=decoder_depth, mlp_ratio=mlp_ratio)

        # encoder: timm / MAE names, so exports load into timm, detectron2 and mmseg
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        grid = self.patch_embed.grid_size
        self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, grid)[None], requires_grad=False)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=LayerNorm)
            for i in range(depth))
        # ONE final LayerNorm, as in the authors' model: it normalizes the decoder output before the
        # prediction head (which trains it) and the encoder tokens of the similarity pass.
        self.norm = LayerNorm(embed_dim)

        # decoder: block k reads the output of encoder block (k + 1) * depth / decoder_depth - 1
        self.decoder_every = depth // decoder_depth
        self.decoder_blocks = nn.ModuleList(
            DecoderBlock(embed_dim, num_heads, mlp_ratio, dpr[k]) for k in range(decoder_depth))

        if target == "pixel":
            self.target = PixelTarget(patch_size, in_chans, blur=pixel_blur)
        else:
            self.target = FeatureTarget(target, **(teacher or {}))
            if self.target.patch_size != patch_size:
                raise ValueError(f"teacher patch size {self.target.patch_size} != model patch size {patch_size}")
        self.decoder_pred = Mlp(embed_dim, int(embed_dim * mlp_ratio), self.target.dim)
        self._init_weights()
        # For similarity_source="ema": an EMA of the whole encoder (patch embedding, [CLS], blocks,
        # final norm), as the authors' ModelEma. A submodule, so checkpoints carry it; never trained.
        self.ema_encoder = EncoderCopy(self) if similarity_source == "ema" else None
        if float8:
            self._convert_to_float8()

    # ------------------------------------------------------------------ init and helpers
    def _init_weights(self):
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("target"):
                continue  # a teacher keeps its own weights
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for blk in self.decoder_blocks:  # the authors' k and v are two D x D matrices, each xavier
            for half in blk.kv.weight.data.chunk(2):
                nn.init.xavier_uniform_(half)

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
        return h // p, w // p

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for any grid: the stored table, or a fresh sin-cos one."""
        if tuple(grid) == tuple(self.patch_embed.grid_size):
            return self.pos_embed
        return sincos_pos_embed(self.pos_embed.shape[-1], grid)[None].to(self.pos_embed)

    def encoder_parameters(self):
        """(name, parameter) of the part that is exported and fine-tuned downstream."""
        prefixes = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
        return [(n, p) for n, p in self.named_parameters() if n.startswith(prefixes)]

    def encoder_state_dict(self) -> dict:
        return {n: p.detach().clone() for n, p in self.encoder_parameters()}

    @torch.no_grad()
    def update_ema(self, decay: float):
        """ema <- decay * ema + (1 - decay) * online, for the similarity encoder."""
        if self.ema_encoder is None:
            return
        online = dict(self.named_parameters())
        ema = dict(self.ema_encoder.named_parameters())
        torch._foreach_lerp_(list(ema.values()), [online[k].detach() for k in ema], 1.0 - decay)

    def no_weight_decay(self):
        # The authors decay [CLS] (timm's add_weight_decay with no skip list); pos_embed is frozen.
        return {"pos_embed"}

    # ------------------------------------------------------------------ the three stages
    def embed(self, images: torch.Tensor, encoder: nn.Module | None = None):
        """Patch tokens with position embeddings (B x N x D), the [CLS] token (B x 1 x D) and the
        position table, from this model's patch embedding and [CLS] (or ``encoder``'s)."""
        encoder = encoder or self
        pos = self.pos_embed_for(self.grid(images))
        x = encoder.patch_embed(images) + pos[:, 1:]
        cls = (encoder.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return x, cls, pos

    @torch.no_grad()
    def forward_similarity(self, images: torch.Tensor) -> torch.Tensor:
        """S (B x N) from an unmasked, no-grad, eval-mode pass (no drop path) of the online
        encoder, its EMA, or the teacher; outside the step's autocast unless asked otherwise."""
        if self.similarity_source == "teacher":  # the authors run the teacher in the step's autocast
            return orders.similarity_map(self.target.tokens(images))
        encoder = self if self.similarity_source == "online" else self.ema_encoder
        exact = self.similarity_precision == "fp32"
        with torch.autocast(images.device.type, enabled=False) if exact else nullcontext():
            x, cls, _ = self.embed(images.to(self.pos_embed.dtype) if exact else images, encoder)
            h = torch.cat([cls, x], dim=1)
            for blk in encoder.blocks:
                h = eval_block(blk, h)
            return orders.similarity_map(encoder.norm(h))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[CLS] + patch tokens (B x (1 + N) x D) after the last block, before the final norm: the
        encoder as downstream tasks run it (every token sees every other, no drop path)."""
        x, cls, _ = self.embed(images)
        h = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            h = eval_block(blk, h)
        return h

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """[CLS] + patch tokens after the final norm (B x (1 + N) x D), as timm's
        ``VisionTransformer.forward_features`` returns them from the exported encoder."""
        return self.norm(self.encode(images))

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """One feature per image (B x D): the mean of the patch tokens, then a LayerNorm without
        affine. The suite's k-NN, linear probe and fine-tuning pool this way (MAE's global pool, timm's
        ``fc_norm`` as initialized), and it is what the published timm folder returns."""
        pooled = self.encode(images)[:, 1:].mean(dim=1)
        return F.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)

    def make_order(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(order C, similarity map S or None) for a batch, as the training step draws them."""
        s = self.forward_similarity(images) if self.order in orders.NEEDS_SIMILARITY else None
        b = images.shape[0]
        c = orders.make_order(self.order, b, self.grid(images), images.device, s, lam=self.order_lambda,
                         smooth=self.order_smooth, num_centers=self.num_centers)
        return c, s

    def forward_encoder_decoder(self, x, cls, pos, order_scores):
        """Predictions (B x N x target dim) in raster order, or in sorted order with the sort index."""
        if self.attention == "sorted":
            idx = order_scores.argsort(dim=1, stable=True)  # orders are strict ranks: the sort is unique
            gather = idx[..., None].expand(-1, -1, x.shape[-1])
            h = torch.cat([cls, x.gather(1, gather)], dim=1)
            g = pos[:, 1:].expand(x.shape[0], -1, -1).gather(1, gather)
            n = x.shape[1]
            enc = dict(is_causal=True)
            dec = dict(is_causal=True)
            kv = lambda h: h[:, :n]  # [CLS] + the first N - 1 sorted patches  # noqa: E731
        else:
            idx = None
            h = torch.cat([cls, x], dim=1)
            g = pos[:, 1:].expand(x.shape[0], -1, -1)
            enc_mask, dec_mask = dense_masks(order_scores)
            enc, dec = dict(attn_mask=enc_mask), dict(attn_mask=dec_mask)
            kv = lambda h: h  # noqa: E731
        for i, blk in enumerate(self.blocks):
            h = self._run(blk, h, **enc)
            if (i + 1) % self.decoder_every == 0:
                g = self._run(self.decoder_blocks[(i + 1) // self.decoder_every - 1], g, kv(h), **dec)
        return self.decoder_pred(self.norm(g)), idx

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block's activations in the backward pass instead of keeping them (timm's
        switch): less memory for a larger batch or ViT-L, about a third more compute, the same result."""
        self.grad_checkpointing = enable

    def _convert_to_float8(self):
        """Opt-in FP8 training (torchao float8, dynamic tensorwise scales): every Linear layer of the
        encoder and decoder blocks multiplies in float8 (e4m3 inputs and weights, e5m2 gradients) and
        keeps its fp32 master weights and parameter names, so checkpoints and exports do not change.
        The patch embedding, the prediction head, the teacher and the EMA copy keep their precision.
        Fast only on GPUs with FP8 tensor cores (compute capability 8.9+) and under torch.compile."""
        try:
            from torchao.float8 import convert_to_float8_training
        except ImportError as e:
            raise ImportError("float8 training needs torchao: pip install torchao==0.18.0 "
                              "(pinned in requirements/base.txt)") from e

        def in_blocks(module: nn.Module, name: str) -> bool:  # torchao's FP8 matmul needs multiples of 16
            fits = isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0
            return fits and name.startswith(("blocks.", "decoder_blocks."))

        convert_to_float8_training(self, module_filter_fn=in_blocks)

    def _run(self, block: nn.Module, *args, **kwargs) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():  # the RNG (drop path) is replayed exactly
            return checkpoint(block, *args, use_reentrant=False, **kwargs)
        return block(*args, **kwargs)

    def forward_loss(self, pred, target, idx):
        """Per-patch loss (B x N, raster order) and its mean."""
        if idx is not None:
            target = target.gather(1, idx[..., None].expand(-1, -1, target.shape[-1]))
        dtype = torch.promote_types(pred.dtype, torch.float32)  # the loss in fp32 even under autocast
        per_patch = self.target.loss(pred.to(dtype), target.to(dtype))
        if idx is not None:
            per_patch = torch.empty_like(per_patch).scatter_(1, idx, per_patch)
        return per_patch.mean(), per_patch

    def forward(self, images: torch.Tensor, order_scores: torch.Tensor | None = None) -> SemAIMOutput:
        """The training forward; ``order_scores`` (B x N) replays a given order instead of drawing one."""
        s = None
        if order_scores is None:
            order_scores, s = self.make_order(images)
        x, cls, pos = self.embed(images)
        if order_scores.shape != x.shape[:2]:
            raise ValueError(f"order_scores must be B x N = {tuple(x.shape[:2])}, got {tuple(order_scores.shape)}")
        pred, idx = self.forward_encoder_decoder(x, cls, pos, order_scores.float())
        with torch.no_grad():
            target = self.target(images)
        loss, per_patch = self.forward_loss(pred, target, idx)
        return SemAIMOutput(loss, per_patch, order_scores, s)


class EncoderCopy(nn.Module):
    """A frozen copy of a SemAIM encoder's parts (patch embedding, [CLS], blocks, final norm)
    under the same names, for the EMA similarity encoder."""

    def __init__(self, model: SemAIM):
        super().__init__()
        self.patch_embed = copy.deepcopy(model.patch_embed)
        self.cls_token = nn.Parameter(model.cls_token.detach().clone())
        self.blocks = copy.deepcopy(model.blocks)
        self.norm = copy.deepcopy(model.norm)
        self.requires_grad_(False)


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
