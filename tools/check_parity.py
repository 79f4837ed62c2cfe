#!/usr/bin/env python
"""Parity of the suite's SemAIM with the authors' released code, on the CPU at a small size.

    python tools/check_parity.py --official /path/to/SemAIM       # a clone of github.com/skyoux/SemAIM

Both models are built at the same small size (112 px, patch 8: the authors' 14 x 14 grid; width
64, 4 blocks, decoder 4), the official weights are mapped onto the suite's model, and fed real images
(the bundled tiny_coco by default). Checked, with exit status 1 past the tolerances:

  forward     similarity map S, order argsort, loss, per-patch loss and per-image gradients,
              for the suite's sorted and dense attention, against the official masked forward;
  training    both from the same initialization, each computing its own semantic order (same
              random draw for the tie-break), 4 AdamW steps with each side's own parameter groups,
              lr schedule and clipping (the official step as engines/engine_pretrain.py runs it,
              the suite's as semaim_core.trainer.Trainer.train_step): loss, centers and lr per
              step, then the drift of every weight;
  dino, clip  the feature-target losses and orders on the same teacher weights (the official
              CLIP tower's weights are saved in OpenAI's layout and read by the suite's loader).

The official code runs unmodified, with the compatibility shims of tools/lib/official.py.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import types
from pathlib import Path

import torch

from semaim_core.errors import HelpFormatter, command
from tools.lib.official import build_aim, import_official

REPO = Path(__file__).resolve().parents[1]
SIZE = dict(img_size=112, patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0)
TOL = 1e-5


# ---------------------------------------------------------------------------- models and weights
def official_model(off, seed: int, predict_feature: str = "none", out_dim: int = 512):
    torch.manual_seed(seed)
    return build_aim(off, **SIZE, predict_feature=predict_feature, out_dim=out_dim)


def suite_model(attention: str = "sorted", target: str = "pixel", teacher: dict | None = None):
    from semaim_core import build_model

    return build_model("semaim_vit_tiny_patch16", decoder_depth=SIZE["depth"], attention=attention, target=target,
                       teacher=teacher, **SIZE)


def suite_name(name: str) -> str:
    """Official parameter name -> the suite's (k and v are fused into ``kv`` by ``to_suite``)."""
    name = name.replace("query_blocks.", "decoder_blocks.").replace("prediction_head.", "decoder_pred.")
    return name.replace(".attn.q.", ".q.").replace(".attn.proj.", ".proj.") if name.startswith("decoder_") else name


def to_suite(tensors: dict) -> dict:
    """Official weights (or gradients) under the suite's names; k and v concatenated into kv."""
    out = {}
    for name, t in tensors.items():
        if name.startswith("gaussian_blur."):
            continue  # the blur kernel is a constant of both targets
        if ".attn.k." in name and name.startswith("query_blocks."):
            v = tensors[name.replace(".attn.k.", ".attn.v.")]
            out[suite_name(name).replace(".attn.k.", ".kv.")] = torch.cat([t, v])
        elif not (".attn.v." in name and name.startswith("query_blocks.")):
            out[suite_name(name)] = t
    return out


def load_official_weights(ours, official):
    sd = to_suite({k: v for k, v in official.state_dict().items() if not k.startswith("teacher")})
    own = {k for k in ours.state_dict() if not k.startswith("target.")}
    if set(sd) != own:
        raise SystemExit(f"weight mapping incomplete: official-only {sorted(set(sd) - own)[:5]}, "
                         f"suite-only {sorted(own - set(sd))[:5]}")
    ours.load_state_dict(sd, strict=False)  # the teacher (target.*) is loaded from its own file


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def tied(permutation: torch.Tensor) -> list[int]:
    return [i for i, row in enumerate(permutation) if row.unique().numel() < row.numel()]


def untied(forward, seed: int):
    """Call the official ``forward`` (loss, permutation, loss map) under seeds ``seed``, ``seed + 1``,
    ... until its float32 order has no tie: on a tied image its masks let the tied pair see each
    other, which no order (ours included) reproduces. Returns (outputs, seed used, draws skipped)."""
    for skipped in range(1000):
        torch.manual_seed(seed + skipped)
        out = forward()
        if not tied(out[1]):
            return out, seed + skipped, skipped
    raise SystemExit("no tie-free draw of the official order in 1000 tries")


# ---------------------------------------------------------------------------- checks
class Report:
    def __init__(self):
        self.rows = []

    def add(self, check: str, what: str, value, ok: bool):
        self.rows.append(dict(check=check, what=what, value=value, ok=bool(ok)))

    def close(self, check: str, what: str, value: float, tol: float = TOL):
        self.add(check, what, f"{value:.2e} rel (tol {tol:.0e})", value <= tol)

    def same(self, check: str, what: str, equal: bool, detail: str = ""):
        self.add(check, what, ("identical" if equal else "DIFFERENT") + (f" ({detail})" if detail else ""), equal)

    @property
    def ok(self) -> bool:
        return all(r["ok"] for r in self.rows)


def check_forward(off, images, seed, report: Report):
    official = official_model(off, seed)
    official.eval()
    with torch.no_grad():
        _, s_official, _ = official(images, forward_encoder=True)
    official.train()
    (loss_o, perm, map_o), draw, skipped = untied(lambda: official(images, None, s_official), seed)
    report.add("forward", "official tie-break draws skipped (their float32 order tied)", skipped, True)
    grads_o = []
    for i in range(len(images)):
        official.zero_grad()
        map_o[i].mean().backward(retain_graph=True)
        grads_o.append(to_suite({n: p.grad.clone() for n, p in official.named_parameters() if p.grad is not None}))
    fresh = suite_model()
    report.same("forward", "sin-cos position table, regenerated", torch.equal(fresh.pos_embed, official.pos_embed))
    for attention in ("sorted", "dense"):
        ours = suite_model(attention)
        load_official_weights(ours, official)
        s = ours.forward_similarity(images)
        report.close("forward", "similarity map S", rel(s, s_official))
        torch.manual_seed(draw)
        order_scores, _ = ours.make_order(images)
        report.same("forward", f"order argsort ({attention})", torch.equal(order_scores.argsort(1), perm.argsort(1)))
        out = ours(images, order_scores=order_scores)
        report.close("forward", f"loss ({attention})", rel(out.loss, loss_o))
        report.close("forward", f"per-patch loss, worst image ({attention})",
                     max(rel(out.patch_loss[i], map_o[i]) for i in range(len(images))))
        worst = 0.0
        for i in range(len(images)):
            ours.zero_grad()
            out.patch_loss[i].mean().backward(retain_graph=True)
            mine = {n: p.grad for n, p in ours.named_parameters() if p.grad is not None}
            if mine.keys() != grads_o[i].keys():
                raise SystemExit(f"gradients of different parameters: {sorted(mine.keys() ^ grads_o[i].keys())[:5]}")
            worst = max(worst, *(rel(mine[n], grads_o[i][n]) for n in mine))
        report.close("forward", f"gradients, worst tensor of any image ({attention})", worst)


def without_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """A weight without its attention key bias (qkv.bias = [q, k, v], the decoder's kv.bias = [k, v])."""
    d = SIZE["embed_dim"]
    if name.endswith("attn.qkv.bias"):
        return torch.cat([t[:d], t[2 * d:]])
    if name.endswith(".kv.bias"):
        return t[d:]
    return t


def check_training(off, batches, seed, lr, report: Report, steps: int, dtype=torch.float64):
    """``steps`` optimizer steps on each side, 2 steps per epoch, 1 warm-up epoch (lr 0 at step 0).

    A key bias adds q . b_k to every logit of a query, which the softmax cancels: its gradient is
    zero in exact arithmetic, rounding noise in float32, and Adam turns that noise into steps of
    about lr on each side independently. So float64 compares every weight; float32 every weight
    but the key-bias slices."""
    check = f"train-{str(dtype).removeprefix('torch.')}"
    batches = [b.to(dtype) for b in batches]
    from semaim_core.recipe import Config
    from semaim_core.trainer import Trainer

    per_epoch = 2
    args = types.SimpleNamespace(accum_iter=1, epochs=math.ceil(steps / per_epoch), warmup_epochs=1, lr=lr, min_lr=0.0,
                                 use_ema_model=False, predict_feature="none", permutation_type="attention_center",
                                 attention_type="cls")
    official = official_model(off, seed).to(dtype)
    optimizer = torch.optim.AdamW(off.add_weight_decay(official, 0.05), lr=lr, betas=(0.9, 0.95))  # main_pretrain.py
    record_o = []
    forward = official.forward

    def recording_forward(imgs, tokens=None, attention_maps=None, forward_encoder=False):
        if forward_encoder:
            return forward(imgs, forward_encoder=True)
        out, draw, skipped = untied(lambda: forward(imgs, tokens, attention_maps), seed + 1000 * len(record_o))
        record_o.append(dict(loss=float(out[0]), perm=out[1], lr=optimizer.param_groups[0]["lr"], draw=draw,
                             skipped=skipped))
        return out

    official.forward = recording_forward
    for epoch in range(args.epochs):
        loader = [(b, torch.zeros(len(b))) for b in batches[epoch * per_epoch:(epoch + 1) * per_epoch]]
        with contextlib.redirect_stdout(io.StringIO()):  # the official logger's lines
            off.engine.train_one_epoch(official, loader, optimizer, torch.device("cpu"), epoch, None, 3.0,
                                       log_writer=None, args=args)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images"
        data.mkdir()
        from PIL import Image
        for i in range(per_epoch * len(batches[0])):  # only sizes the epoch: the steps get `batches`
            Image.new("RGB", (8, 8)).save(data / f"{i}.png")
        cfg = Config(data=str(data), output_dir=str(Path(tmp) / "run"), model="semaim_vit_tiny_patch16",
                     img_size=SIZE["img_size"], depth=SIZE["depth"], decoder_depth=SIZE["depth"], order="semantic",
                     batch_size=len(batches[0]), accum_iter=1, epochs=args.epochs, warmup_epochs=1, lr=lr,
                     clip_grad=3.0, dtype="fp32", device="cpu", num_workers=0, resume=None)
        trainer = Trainer(cfg, model_overrides=dict(patch_size=SIZE["patch_size"], embed_dim=SIZE["embed_dim"],
                                                    num_heads=SIZE["num_heads"]))
    trainer.model.to(dtype)  # in place: the optimizer keeps its parameters
    load_official_weights(trainer.model, official_model(off, seed))
    trainer.model.train()
    record_s = []
    hook = trainer.model.register_forward_hook(lambda m, i, out: record_s.append(
        dict(loss=float(out.loss), order=out.order_scores, lr=trainer.optimizer.param_groups[0]["lr"])))
    for t in range(steps):
        torch.manual_seed(record_o[t]["draw"])  # the official step's tie-break draw
        trainer.train_step([batches[t]])
    hook.remove()

    report.add(check, "official tie-break draws skipped (their float32 order tied)",
               sum(o["skipped"] for o in record_o), True)
    for t, (o, s) in enumerate(zip(record_o, record_s)):
        report.close(check, f"step {t}: loss", abs(s["loss"] - o["loss"]) / abs(o["loss"]))
        report.same(check, f"step {t}: centers", torch.equal(s["order"].argmin(1), o["perm"].argmin(1)),
                    f"{o['perm'].argmin(1).tolist()}")
        report.same(check, f"step {t}: order argsort", torch.equal(s["order"].argsort(1), o["perm"].argsort(1)))
        report.close(check, f"step {t}: lr", abs(s["lr"] - o["lr"]) / max(o["lr"], 1e-30) if o["lr"] else abs(s["lr"]))
    final = to_suite(dict(official.named_parameters()))
    mine = dict(trainer.model.named_parameters())
    encoder = [n for n in final if n.startswith(("patch_embed.", "cls_token", "blocks.", "norm."))]
    drift = {n: rel(mine[n], final[n]) if dtype == torch.float64 else
             rel(without_key_bias(n, mine[n]), without_key_bias(n, final[n])) for n in final}
    but = "" if dtype == torch.float64 else ", key biases excepted"
    report.close(check, f"after {steps} steps: worst encoder weight ({len(encoder)} tensors incl. norm.*{but})",
                 max(drift[n] for n in encoder))
    report.close(check, f"after {steps} steps: worst decoder/head weight{but}",
                 max(drift[n] for n in final if n not in encoder))
    moved = rel(mine["norm.weight"], torch.ones_like(mine["norm.weight"]))
    report.add(check, "shared final norm moved from its init", f"{moved:.2e}", moved > 0)


def check_feature_target(off, kind: str, images, seed, report: Report, tmp: Path):
    import timm

    torch.manual_seed(seed + 1)
    width, out_dim = 48, 32
    if kind == "clip":
        teacher = off.clip.VisionTransformer(SIZE["img_size"], SIZE["patch_size"], width, 2, 2, out_dim).float().eval()
        torch.save({f"visual.{k}": v for k, v in teacher.state_dict().items()}, tmp / "clip.pth")  # OpenAI's layout
        spec = dict(weights=str(tmp / "clip.pth"), img_size=SIZE["img_size"], patch_size=SIZE["patch_size"],
                    embed_dim=width, depth=2, num_heads=2)
    else:  # the authors' DINO teacher is timm's vit_base_patch16_224(num_classes=0)
        teacher = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=SIZE["img_size"],
                                    patch_size=SIZE["patch_size"], embed_dim=SIZE["embed_dim"], depth=2,
                                    num_heads=2).eval()
        torch.save(teacher.state_dict(), tmp / "dino.pth")
        spec = dict(weights=str(tmp / "dino.pth"), arch="vit_base_patch16_224", img_size=SIZE["img_size"],
                    patch_size=SIZE["patch_size"], embed_dim=SIZE["embed_dim"], depth=2, num_heads=2)
    official = official_model(off, seed, predict_feature=kind, out_dim=out_dim)
    with torch.no_grad():
        tokens = off.engine.forward_teacher_features(teacher, images, kind)
        similarity = off.engine.calculate_similarity(tokens)
    (loss_o, perm, map_o), draw, _ = untied(lambda: official(images, tokens, similarity), seed)
    ours = suite_model(target=kind, teacher=spec)
    load_official_weights(ours, official)
    report.close(kind, "teacher tokens", rel(ours.target.tokens(images), tokens))
    torch.manual_seed(draw)
    out = ours(images)
    same = torch.equal(out.order_scores.argsort(1), perm.argsort(1))
    report.same(kind, "order argsort (similarity from the teacher)", same)
    report.close(kind, "loss", rel(out.loss, loss_o))
    report.close(kind, "per-patch loss, worst image", max(rel(out.patch_loss[i], map_o[i]) for i in range(len(images))))


# ---------------------------------------------------------------------------- command line
def load_images(folder: Path, count: int) -> torch.Tensor:
    from semaim_core.data import ImageDataset, eval_transform

    ds = ImageDataset(folder, eval_transform(SIZE["img_size"]))
    if len(ds) < count:
        raise SystemExit(f"{folder} holds {len(ds)} images; the check needs {count}")
    return torch.stack([ds.transform(ds.load(i)) for i in range(count)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--official", required=True, type=Path, help="a checkout of the official SemAIM repository")
    ap.add_argument("--images", type=Path, default=REPO / "data" / "tiny_coco" / "val2017",
                    help="a folder of images to feed both models (default: the bundled tiny_coco val2017)")
    ap.add_argument("--batch", type=int, default=4, help="images per step")
    ap.add_argument("--steps", type=int, default=4, help="training steps to compare")
    ap.add_argument("--seed", type=int, default=0, help="seeds the initialization and the tie-break draws")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak lr of the training check")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(min(torch.get_num_threads(), 4))
    off = import_official(args.official.resolve())
    images = load_images(args.images, args.batch * args.steps)
    batches = list(images.split(args.batch))
    report = Report()
    check_forward(off, batches[0], args.seed, report)
    for dtype in (torch.float64, torch.float32):
        check_training(off, batches, args.seed, args.lr, report, args.steps, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("dino", "clip"):
            check_feature_target(off, kind, batches[0], args.seed, report, Path(tmp))

    width = max(len(r["what"]) for r in report.rows)
    print(f"SemAIM parity: suite vs official {args.official} (CPU, float32 unless named, {SIZE['img_size']} px, patch "
          f"{SIZE['patch_size']}, width {SIZE['embed_dim']}, depth {SIZE['depth']}, images from {args.images})")
    for r in report.rows:
        print(f"  {'ok  ' if r['ok'] else 'FAIL'} {r['check']:<9} {r['what']:<{width}}  {r['value']}")
    failed = sum(not r["ok"] for r in report.rows)
    print(f"{len(report.rows) - failed} passed, {failed} failed")
    if args.json:
        args.json.write_text(json.dumps(dict(official=str(args.official), size=SIZE, rows=report.rows), indent=2))
    return 0 if report.ok else 1


cli = command(main)  # the console script (pyproject.toml): bad input as one line, no traceback

if __name__ == "__main__":
    sys.exit(cli())
