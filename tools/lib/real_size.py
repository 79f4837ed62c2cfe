"""Every production config at its real size: built as written, initialised from real-size weights
through the path a user takes, one training step and one evaluation step each.

The tests run every config shrunk (tiny width, 64-256 px); these steps run them as a user's first
real job does: pretraining's ``base`` preset (ViT-B/16, 224 px), its export and every converter
output, then the det configs at 1024 px, the seg configs at 512 px with slide inference on one
640 x 480 image (the depth configs at 416 x 544, tested on one whole 640 x 480 scene), and the cls
entry points at 224 px, all from that export (its 14 x 14 position table interpolated to the
detector's 64 x 64 grid as detectron2 does it, and to mmseg's 32 x 32 or 26 x 34).
The ViT-L configs start from a ViT-L export of the same kind (random weights of the real shape).

Each step runs in a process of its own, so that its wall time and peak memory (the process's
maximum resident set) are its own; ``tools/real_size_check.py`` runs them and writes a table.
What a step cannot take from the bundled data it says: LVIS and ADE20K are not shipped, so the
LVIS configs train on tiny_coco's images and annotations (their 1203-class heads and federated
loss as written, its class weights from LVIS's own counts, which detectron2 ships) and are scored
by running the detector on one image (LVIS's evaluator needs LVIS's annotations); the ADE20K
configs train and test on the derived COCO-Stuff maps through their own pipeline, and the NYU
configs on the derived depth scenes (NYU's layout and frame) through theirs. On a CPU, AMP
is off (detectron2's AMPTrainer and mmengine's AmpOptimWrapper are CUDA-only) and SyncBN runs as
BN (one process, mmengine reverts it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY_COCO = REPO / "data" / "tiny_coco"


@dataclass(frozen=True)
class Step:
    name: str
    kind: str            # pretrain, convert, export, det_train, det_eval, seg_train, seg_eval, cls
    config: str = ""     # a det / seg config, or a cls entry point
    size: str = "b"      # the encoder it starts from: b (the pretraining step's export) or l
    needs: str = ""      # the step whose output it reads, besides its encoder's

    @property
    def inputs(self) -> set[str]:
        """The steps it reads from: ``needs`` and the step that writes its encoder."""
        writer = {"b": "pretrain base", "l": "export ViT-L"}[self.size]
        return {name for name in (self.needs, writer) if name and name != self.name}


DET = ["vitdet_semaim", "vitdet_semaim_cascade", "vitdet_semaim_lvis", "vitdet_semaim_lvis_cascade"]
DET_L = ["vitdet_semaim_large", "vitdet_semaim_cascade_large", "vitdet_semaim_lvis_cascade_large"]
SEG = ["upernet_semaim-vit-b16_8xb2-amp-160k_ade20k-512x512",
       "upernet_semaim-vit-b16_8xb2-amp-80k_coco-stuff164k-512x512",
       "linear_semaim-vit-b16_8xb2-40k_ade20k-512x512", "linear4_semaim-vit-b16_8xb2-40k_ade20k-512x512",
       "lineardepth_semaim-vit-b16_8xb2-38400iters_nyu-416x544",
       "lineardepth4_semaim-vit-b16_8xb2-38400iters_nyu-416x544"]
SEG_L = ["upernet_semaim-vit-l16_8xb2-amp-160k_ade20k-512x512"]
CLS = ["finetune", "linprobe", "attnprobe", "knn"]


def steps() -> list[Step]:
    out = [Step("pretrain base", "pretrain"), Step("convert", "convert", needs="pretrain base"),
           Step("export ViT-L", "export", size="l")]
    for configs, size in ((DET, "b"), (DET_L, "l")):
        for c in configs:
            out += [Step(f"det train {c}", "det_train", c, size), Step(f"det eval {c}", "det_eval", c, size,
                                                                        needs=f"det train {c}")]
    for configs, size in ((SEG, "b"), (SEG_L, "l")):
        for c in configs:
            out += [Step(f"seg train {c}", "seg_train", c, size), Step(f"seg eval {c}", "seg_eval", c, size,
                                                                        needs=f"seg train {c}")]
    out += [Step(f"cls {c}", "cls", c) for c in CLS]
    return out


# ---------------------------------------------------------------------------- the steps (in their process)
def encoder_path(work: Path, size: str) -> Path:
    return work / "pretrain" / "encoder.pth" if size == "b" else work / "encoder_l.pth"


def run_pretrain(step: Step, work: Path, device: str) -> dict:
    from semaim_core.pretrain import main

    out = work / "pretrain"
    main(["--preset", "base", "--data", str(TINY_COCO / "train2017"), "--output-dir", str(out), "--batch-size", "2",
          "--accum-iter", "1", "--max-steps", "1", "--num-workers", "0", "--device", device, "--resume", "none",
          "--overwrite"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[-1]["loss"]), rows[-1]
    assert (out / "encoder.pth").is_file() and (out / "encoder.safetensors").is_file()
    drop_checkpoints(out, "checkpoint-*.pth")
    return dict(loss=rows[-1]["loss"], detail="1 step at batch 2, then encoder.pth / .safetensors")


def run_convert(step: Step, work: Path, device: str) -> dict:
    import timm
    import torch

    from semaim_core.layouts import read_encoder
    from semaim_core.safe_io import load_file
    from tools.convert_checkpoint import main

    enc = encoder_path(work, "b")
    sd, _ = read_encoder(enc)
    for to, name in (("encoder", "encoder.safetensors"), ("timm", "timm.pth"), ("detectron2", "d2.pth"),
                     ("mmseg", "mmseg.pth")):
        main([str(enc), str(work / "convert" / name), "--to", to])
    again, _ = read_encoder(work / "convert" / "encoder.safetensors")
    assert all(torch.equal(again[k], v) for k, v in sd.items())
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    vit.load_state_dict(load_file(work / "convert" / "timm.pth"))  # strict: timm's layout exactly
    assert len(load_file(work / "convert" / "d2.pth")["model"]) == len(sd) - 3  # no [CLS], no final norm
    assert len(load_file(work / "convert" / "mmseg.pth")["state_dict"]) == len(sd)
    return dict(detail="encoder (safetensors), timm (strict load into vit_base_patch16_224), detectron2, mmseg")


def run_export(step: Step, work: Path, device: str) -> dict:
    import torch

    from semaim_core import build_model
    from semaim_core.export import export_encoder, save_encoder

    torch.manual_seed(0)
    save_encoder(export_encoder(build_model("semaim_vit_large_patch16", img_size=224)), encoder_path(work, "l"))
    return dict(detail="ViT-L/16 at 224 px, random weights of the real shape")


def one_image_datasets():
    """``tiny_coco_one``: tiny_coco's first val image, registered like tiny_coco_val."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from det.data import register_tiny_coco

    register_tiny_coco()
    if "tiny_coco_one" not in DatasetCatalog.list():
        DatasetCatalog.register("tiny_coco_one", lambda: DatasetCatalog.get("tiny_coco_val")[:1])
        val = MetadataCatalog.get("tiny_coco_val")
        DatasetCatalog.get("tiny_coco_val")  # sets the val metadata's classes
        MetadataCatalog.get("tiny_coco_one").set(**{k: getattr(val, k) for k in (
            "thing_classes", "thing_dataset_id_to_contiguous_id", "json_file", "image_root", "evaluator_type")})


def det_options(step: Step, work: Path, device: str) -> list[str]:
    """The config as written, but for the data (tiny_coco), one image per batch, one step and the device."""
    options = [f"train.output_dir={work / step.config}", f"train.device={device}", "dataloader.train.num_workers=0",
               "dataloader.test.num_workers=0", "dataloader.train.dataset.names=tiny_coco_train",
               "dataloader.test.dataset.names=tiny_coco_one", "dataloader.train.total_batch_size=1"]
    if device == "cpu":
        options.append("train.amp.enabled=False")
    if "lvis" in step.config:  # the federated loss's class weights: LVIS's own counts (detectron2's metadata)
        key = ("model.roi_heads.box_predictors.{}" if "cascade" in step.config else "model.roi_heads.box_predictor")
        for i in range(3 if "cascade" in step.config else 1):
            options.append(f"{key.format(i)}.get_fed_loss_cls_weights.dataset_names=lvis_v1_train")
    return options


# a ViT-L detector's training step at 1024 px on the CPU (fp32, batch 1) peaked at 19.7-21.0 GiB
# (docs/benchmarks.md): where less memory is free, the step builds the detector and loads the
# encoder only (detectron2's activation checkpointing, which would halve it, needs fairscale)
VIT_L_DET_TRAIN_GIB = 22


def available_gib() -> float:
    """Free memory now (MemAvailable), less what the caller keeps for other work (--reserve-gib)."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return int(meminfo["MemAvailable"].split()[0]) / 2 ** 20 - float(os.environ.get("REAL_SIZE_RESERVE_GIB", 0))


def run_det_train(step: Step, work: Path, device: str) -> dict:
    import torch

    from det.train_net import main, parse_args
    from semaim_core.layouts import read_encoder
    from semaim_core.safe_io import load_file

    one_image_datasets()
    enc = encoder_path(work, step.size)
    if step.size == "l" and device == "cpu" and available_gib() < VIT_L_DET_TRAIN_GIB:
        return build_and_load(step, work, device, enc)
    main(parse_args(["--overwrite", "--config", f"det/configs/{step.config}.py", *det_options(step, work, device),
                     f"train.init_checkpoint={enc}", "train.stop_after_iter=1", "train.eval_period=0",
                     "train.checkpointer.period=1000000"]))
    out = work / step.config
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    loss = next(r["total_loss"] for r in rows if "total_loss" in r)
    assert math.isfinite(loss), rows
    trained = load_file(out / "model_final.pth")["model"]
    start = read_encoder(enc)[0]
    changed = [k for k in ("blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.weight", "patch_embed.proj.weight")
               if not torch.equal(trained[f"backbone.net.{k}"], start[k])]
    assert changed, "one step changed no backbone weight"
    return dict(loss=loss, trained=True,
                detail=f"1 step at 1024 px, batch 1; backbone weights changed: {len(changed)} of 3 checked")


def build_and_load(step: Step, work: Path, device: str, enc: Path) -> dict:
    """The detector built as the config says and the encoder loaded into it (train.init_checkpoint's
    path), saved as the run's model_final.pth for the evaluation step: no training step."""
    from detectron2.config import LazyConfig, instantiate

    from det.checkpoint import AtomicCheckpointer, load_backbone
    from det.train_net import apply_overrides

    cfg = apply_overrides(LazyConfig.load(f"det/configs/{step.config}.py"), det_options(step, work, device))
    model = instantiate(cfg.model)
    report = load_backbone(model, str(enc))
    out = work / step.config
    out.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointer(model, str(out)).save("model_final")
    return dict(trained=False, detail=f"built, {report['loaded']} backbone tensors loaded; the training step needs "
                                      f"~{VIT_L_DET_TRAIN_GIB} GiB, {available_gib():.1f} GiB were available")


def run_det_eval(step: Step, work: Path, device: str) -> dict:
    from det.train_net import main, parse_args

    one_image_datasets()
    final = work / step.config / "model_final.pth"
    args = ["--config", f"det/configs/{step.config}.py", *det_options(step, work, device),
            f"train.init_checkpoint={final}"]
    if "lvis" not in step.config:
        main(parse_args(["--eval-only", *args]))
        drop_checkpoints(work / step.config)
        metrics = json.loads((work / step.config / "det_metrics.json").read_text())
        when = f"after iteration {metrics['iteration']}" if metrics["iteration"] else "untrained"
        return dict(detail=f"COCO evaluation of 1 image ({when}): box AP {metrics['bbox'].get('AP')}, mask AP "
                           f"{metrics['segm'].get('AP')} (None: no detection above the score threshold yet)")
    result = lvis_inference(parse_args(args), final)
    drop_checkpoints(work / step.config)
    return result


def lvis_inference(args, checkpoint: Path) -> dict:
    """The LVIS detector on one image through the config's test mapper: LVIS's evaluator needs
    LVIS's annotations, which are not shipped."""
    import torch
    from detectron2.config import LazyConfig, instantiate

    from det.checkpoint import load_detector
    from det.train_net import apply_overrides

    cfg = apply_overrides(LazyConfig.load(args.config_file), args.opts)
    model = instantiate(cfg.model).to(cfg.train.device).eval()
    load_detector(model, str(checkpoint))
    batch = next(iter(instantiate(cfg.dataloader.test)))
    with torch.no_grad():
        instances = model(batch)[0]["instances"]
    assert len(instances) <= 300 and instances.has("pred_masks")
    return dict(detail=f"inference on 1 image: {len(instances)} detections (at most 300), with masks")


SEG_DATA = {"train": "train2017", "val": "val2017", "test": "val2017"}


def seg_config(step: Step, work: Path, device: str) -> Path:
    """The config as written, on the derived COCO-Stuff maps, as a file of its own: one step of the
    written batch, then a checkpoint; on a CPU without AMP (mmengine's AmpOptimWrapper is CUDA-only)."""
    from mmengine.config import Config

    import seg  # noqa: F401  (registration)
    from semaim_core.configs import resolve_config

    cfg = Config.fromfile(resolve_config(step.config, REPO / "seg" / "configs"))
    for split, folder in SEG_DATA.items():
        cfg[f"{split}_dataloader"].update(num_workers=0, persistent_workers=False)
        dataset = cfg[f"{split}_dataloader"].dataset
        if dataset.type == "NYUDataset":  # the derived scenes are NYU's layout and frame size: as written
            dataset.data_root = str(work / "derived" / "depth_scenes")
            continue
        reduce = any(t.get("reduce_zero_label") for t in dataset.pipeline)  # ADE20K's pipeline: as written
        dataset.update(type="COCOStuffDataset", data_root=str(work / "derived" / "coco_stuff"),
                       data_prefix=dict(img_path=f"images/{folder}", seg_map_path=f"annotations/{folder}"),
                       reduce_zero_label=reduce)
    cfg.model.backbone.checkpoint = str(encoder_path(work, step.size))
    cfg.train_cfg.update(max_iters=1, val_begin=2)  # mmengine would validate after the last iteration
    cfg.default_hooks.checkpoint.interval = cfg.default_hooks.logger.interval = 1
    if device == "cpu":
        cfg.optim_wrapper.type = "OptimWrapper"
        cfg.optim_wrapper.pop("loss_scale", None)
    if cfg.test_dataloader.dataset.type == "NYUDataset":
        cfg.test_dataloader.dataset.indices = [0]
    else:
        cfg.test_dataloader.dataset.indices = [one_640x480(work / "derived" / "coco_stuff" / "images" / "val2017")]
    path = work / f"{step.config}.py"
    cfg.dump(str(path))
    return path


def one_640x480(folder: Path) -> int:
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))
    return next(i for i, f in enumerate(files) if Image.open(f).size == (640, 480))


def run_seg_train(step: Step, work: Path, device: str) -> dict:
    from seg.tools.train import main

    config = seg_config(step, work, device)
    main([str(config), "--work-dir", str(work / step.config), "--overwrite"])
    scalars = next((work / step.config).glob("*/vis_data/scalars.json")).read_text().splitlines()
    loss = next(row["loss"] for row in map(json.loads, scalars) if "loss" in row)
    assert math.isfinite(loss)
    crop = "416 x 544" if "nyu" in step.config else "512 px"
    return dict(loss=loss, detail=f"1 step at {crop}, the written batch of 2")


def run_seg_eval(step: Step, work: Path, device: str) -> dict:
    from seg.tools.test import main

    metrics = main([str(work / f"{step.config}.py"), str(work / step.config / "iter_1.pth"), "--work-dir",
                    str(work / step.config)])
    drop_checkpoints(work / step.config)
    if "rmse" in metrics:
        return dict(detail=f"whole-image inference with its flip on one 640 x 480 scene: RMSE {metrics['rmse']:.3f} m")
    return dict(detail=f"slide inference (512, stride 341) on one 640 x 480 image: mIoU {metrics['mIoU']}")


def run_cls(step: Step, work: Path, device: str) -> dict:
    import importlib

    main = importlib.import_module(f"cls.{step.config}").main
    result = main(["--data", str(work / "derived" / "crops"), "--encoder", str(encoder_path(work, "b")),
                   "--output-dir", str(work / f"cls_{step.config}"), "--img-size", "224", "--batch-size", "2",
                   "--fit-images", "2", "--num-workers", "0", "--device", device,
                   *([] if step.config == "knn" else ["--epochs", "1"])])
    drop_checkpoints(work / f"cls_{step.config}")
    what = "the features of 2 images at 224 px as memory bank and queries" if step.config == "knn" else \
        "1 step at 224 px, batch 2, scored on those 2 images"
    return dict(detail=f"{what}: top-1 {result['top1']}")


def drop_checkpoints(folder: Path, pattern: str = "*.pth"):
    """A step's checkpoints, once read (a ViT-L detector's with its optimizer state is 4 GB): the
    check would otherwise leave some 15 GB behind."""
    for path in folder.glob(pattern):
        path.unlink()


RUNNERS = dict(pretrain=run_pretrain, convert=run_convert, export=run_export, det_train=run_det_train,
               det_eval=run_det_eval, seg_train=run_seg_train, seg_eval=run_seg_eval, cls=run_cls)


# ---------------------------------------------------------------------------- the driver
def derived_data(work: Path) -> Path:
    """The segmentation maps, depth scenes and crops derived from tiny_coco, in ``work`` (reused
    when up to date)."""
    from tools.lib.coco_derive import derive

    derive(TINY_COCO, work / "derived")
    return work / "derived"


def run_in_process(name: str, work: Path, device: str, threads: int | None, reserve_gib: float = 0) -> dict:
    """``name`` in a process of its own: its result, wall time and peak memory (os.wait4's rusage)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", REAL_SIZE_RESERVE_GIB=str(reserve_gib))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = work / "logs" / f"{name.replace(' ', '_')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "tools.lib.real_size", name, "--work", str(work), "--device",
                                 device], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - tick
    result_file = work / "results" / f"{name.replace(' ', '_')}.json"
    ok = os.waitstatus_to_exitcode(status) == 0 and result_file.is_file()
    result = json.loads(result_file.read_text()) if ok else {
        "detail": "FAILED: " + " | ".join(log.read_text().strip().splitlines()[-3:])}
    return dict(step=name, ok=ok, seconds=round(seconds, 1), peak_gib=round(usage.ru_maxrss / 2 ** 20, 2),
                log=str(log), **result)


def main(argv=None):
    ap = argparse.ArgumentParser(description="one step of tools/real_size_check.py, in its own process")
    ap.add_argument("step", choices=[s.name for s in steps()])
    ap.add_argument("--work", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    step = next(s for s in steps() if s.name == args.step)
    work = Path(args.work)
    result = RUNNERS[step.kind](step, work, args.device)
    if args.device.startswith("cuda"):  # the device's own peak, beside the process's resident memory
        import torch

        result["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    out = work / "results" / f"{step.name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
