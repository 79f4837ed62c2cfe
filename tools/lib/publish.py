"""A pretraining run as a folder the Hugging Face Hub and timm read as is, and its check after download.

The folder holds ``model.safetensors`` and ``config.json`` written by timm's own ``save_for_hf``
(timm's key layout, ``num_classes: 0``, the evaluation preprocessing in ``pretrained_cfg``), a
``README.md`` whose YAML header is timm's ``generate_readme``, the files the converter writes for
detectron2 and mmseg, the pretraining log, a model-zoo row, and ``SHA256SUMS`` over all of them.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from semaim_core.data import eval_crop_pct
from semaim_core.errors import UserError
from semaim_core.layouts import read_encoder
from semaim_core.rundir import acquire_lock, file_digest, release_lock
from semaim_core.safe_io import CheckpointError, load_file, save_atomic
from tools.convert_checkpoint import WRITERS
from tools.lib.results import METRICS, OPERATIONAL, collect

WEIGHTS, CONFIG, CARD, LOG, ZOO_ROW, SUMS = ("model.safetensors", "config.json", "README.md", "metrics.jsonl",
                                             "zoo_row.md", "SHA256SUMS")
FRAMEWORK_FILES = {"detectron2": "detectron2_vitdet_backbone.pth", "mmseg": "mmseg_vit_backbone.pth"}
CITATION = """@article{song2023semantic,
  title={Semantic-Aware Autoregressive Image Modeling for Visual Representation Learning},
  author={Song, Kaiyou and Zhang, Shan and Wang, Tong},
  journal={arXiv preprint arXiv:2312.10457},
  year={2023}
}"""  # as the authors' README gives it
ZOO_HEADER = ("| model | architecture | recipe | epochs | model.safetensors sha256 "
              "| downstream (run directory, commit) |\n|---|---|---|---:|---|---|")


class PublishError(UserError, ValueError):
    pass


def find_encoder(run: Path) -> Path:
    for name in ("encoder.safetensors", "encoder.pth"):
        if (run / name).is_file():
            return run / name
    raise PublishError(f"{run}: no encoder.safetensors or encoder.pth (a finished pretraining run exports one; "
                       "or export it: python tools/convert_checkpoint.py CHECKPOINT RUN/encoder.safetensors)")


def data_config(img_size: int) -> dict:
    """timm's preprocessing entries for the suite's evaluation transform (semaim_core.data.eval_transform)."""
    return dict(input_size=(3, img_size, img_size), interpolation="bicubic", crop_mode="center",
                crop_pct=eval_crop_pct(img_size), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)


# where each downstream trainer's run.json records the sha256 of the encoder it started from
STARTED_FROM = ("encoder.sha256", "train.init_checkpoint.sha256", "model.backbone.checkpoint.sha256")


def started_from(result: Path) -> str | None:
    """The sha256 of the encoder a det / seg / cls run started from, as its run.json records it."""
    try:
        recipe = json.loads((result / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return next((recipe[k] for k in STARTED_FROM if isinstance(recipe.get(k), str)), None)


def foreign_results(run: Path, results: list[str]) -> list[str]:
    """The result directories that did not start from one of ``run``'s exported encoder files."""
    ours = {file_digest(run / n) for n in ("encoder.safetensors", "encoder.pth") if (run / n).is_file()}
    return [f"{r}: started from {started_from(Path(r)) or 'an encoder it does not record'}, not from "
            f"{run}'s encoder (sha256 {', '.join(sorted(d[:12] for d in ours))}): its numbers are another model's"
            for r in results if started_from(Path(r)) not in ours]


def zoo_row(name: str, meta: dict, digest: str, results: list[str]) -> tuple[str, list[str]]:
    """(a markdown model-zoo row, its problems): model, recipe, epochs, sha256 prefix, and the
    downstream numbers of ``results`` (det / seg / cls run directories) with where they came from."""
    row = collect([(name, results)])[0] if results else None
    scores = []
    if row:
        for (metric, dataset), value in sorted(row.values.items()):
            if metric != "epochs" and isinstance(value, (int, float)):
                src = row.sources.get((metric, dataset), {})
                where = f"{Path(src.get('file', '?')).parent.name}, commit {str(src.get('suite_commit'))[:7]}"
                scores.append(f"{dict(METRICS).get(metric, metric)} {value:.1f} [{dataset}] ({where})")
    recipe = f"{meta.get('order')} order, {meta.get('target')} target"
    line = (f"| {name} | {meta['timm_arch']} ({meta['depth']} blocks, {meta['img_size']} px) | {recipe} | "
            f"{meta.get('epochs')} | `{digest[:12]}` | {'; '.join(scores) or 'none given'} |")
    return line, (row.problems if row else [])


def pretraining_recipe(run: Path) -> dict:
    """The run's pretraining settings (config.json), without the operational ones (paths, workers...)."""
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in config.items() if k not in OPERATIONAL and k not in ("data", "output_dir")}


def card(name: str, meta: dict, run: Path, license: str, dataset: str, row: str) -> str:
    from timm.models._hub import generate_readme

    details = {"Model Type": "Image feature backbone (SemAIM pretraining, no classifier head)",
               "Architecture": f"ViT, patch {meta['patch_size']}, width {meta['embed_dim']}, depth {meta['depth']}, "
                               f"{meta['num_heads']} heads, {meta['img_size']} px",
               "Dataset": dataset,  # the Hub header's datasets: list (timm reads this key)
               "Papers": ["Semantic-Aware Autoregressive Image Modeling for Visual Representation Learning "
                          "(AAAI 2024, arXiv:2312.10457)"]}
    for key, label in (("order", "Autoregression order"), ("target", "Prediction target"), ("epochs", "Epochs"),
                       ("steps", "Optimizer steps"), ("final_loss", "Final training loss"),
                       ("suite_commit", "Suite commit")):
        if meta.get(key) is not None:
            details[label] = meta[key]
    details["Recipe"] = pretraining_recipe(run) or "(no config.json in the run)"
    usage = f"""```python
import timm
model = timm.create_model("hf-hub:USER/{name}", pretrained=True)   # or "local-dir:PATH/TO/THIS/FOLDER"
feature = model(images)                      # B x {meta['embed_dim']}: the pooled feature the suite scores
```
The folder is pooled as the suite's k-NN, linear probe and fine-tuning pool an encoder
(`global_pool="avg"`): the mean of the patch tokens, then timm's `fc_norm` as initialized (a
LayerNorm without affine) in place of the encoder's final norm, as in MAE's fine-tuning. The [CLS]
token of an autoregressive encoder attends only to itself during pretraining, so it is not used.
The tokens after the encoder's own final norm: `semaim_core.load_encoder(PATH).forward_features(images)`
on the run's `encoder.safetensors`.
- detectron2 (ViTDet): `train.init_checkpoint={FRAMEWORK_FILES['detectron2']}` with the suite's `det/train_net.py`
- mmseg (UperNet): `model.backbone.checkpoint={FRAMEWORK_FILES['mmseg']}` with the suite's `seg/tools/train.py`
- `{LOG}` is the pretraining log (one JSON record per step); `{SUMS}` lists every file's sha256
  (`python tools/publish.py --verify FOLDER`).
"""
    text = generate_readme(dict(license=license, tags=["image-feature-extraction", "timm", "semaim"],
                                details=details, usage=usage, citation=CITATION,
                                description=f"A SemAIM-pretrained ViT encoder from the run `{run.name}`."),
                           name, task_name="image-feature-extraction")
    return text + f"\n## Model zoo row\n\n{ZOO_HEADER}\n{row}\n"


def publish(run: str | Path, out: str | Path, *, name: str | None = None, results=(), license: str = "mit",
            dataset: str | None = None, overwrite: bool = False) -> Path:
    """Write the Hub folder for the pretraining run ``run`` into ``out``; returns ``out``.

    The folder is written whole under a temporary name of this process, then renamed into place
    (the old one stays until the new one is whole); a lock beside ``out`` refuses a second
    publisher into the same folder while one runs."""
    run, out = Path(run), Path(out)
    encoder = find_encoder(run)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PublishError(f"cannot create {out.parent} ({e.strerror}): choose a folder you can write to") from None
    lock = f".{out.name}.lock"
    acquire_lock(out.parent, lock, what=f"{out} (another tools/publish.py writes it)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
            raise PublishError(f"{out} is not empty: publish into a new folder, or pass --overwrite to replace it")
        _write_folder(run, encoder, tmp, name, list(results), license, dataset)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        tmp.rename(out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _disk_full(e):
            free = shutil.disk_usage(out.parent).free
            raise PublishError(f"writing {out} failed: no space left on its disk ({free:,} bytes free; {e}). The "
                               "partial folder was removed; free space (the folder needs about 3 x the encoder's "
                               "size) and publish again") from None
        raise
    finally:
        release_lock(out.parent, lock)
    return out


# how the writers the folder goes through say that the disk is full: Python's OSError (ENOSPC), torch's
# zip writer (a short write: "unexpected pos"), safetensors' Rust writer ("os error 28")
DISK_FULL = ("No space left on device", "os error 28", "unexpected pos", "file write failed")


def _disk_full(e: BaseException) -> bool:
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        isinstance(e, Exception) and any(words in str(e) for words in DISK_FULL))


def _write_folder(run: Path, encoder: Path, tmp: Path, name: str | None, results: list, license: str,
                  dataset: str | None):
    from timm.models import save_for_hf

    from cls.backbone import timm_vit_from_encoder

    foreign = foreign_results(run, results)
    if foreign:
        raise PublishError("\n  ".join(["the model-zoo row would hold another encoder's numbers:", *foreign]))
    sd, meta = read_encoder(encoder)
    name = name or f"semaim_{meta['timm_arch'].removesuffix('_224')}_{meta.get('order')}_{meta.get('epochs')}ep"
    row, problems = zoo_row(name, meta, "", results)  # checked before anything is written
    if len(problems) == 1:
        raise PublishError(f"a downstream run given has a problem: {problems[0]}")
    if problems:
        raise PublishError("the downstream runs given have problems:\n  " + "\n  ".join(problems))
    # pooled as the suite scores encoders (k-NN, probes, fine-tuning): the patch tokens' mean, then
    # timm's fc_norm as initialized (a LayerNorm without affine), in place of the final norm
    model = timm_vit_from_encoder(encoder, num_classes=0, global_pool="avg").eval()
    tag = dict(tag=name, license=license)  # not the timm architecture's own ImageNet tag and license
    save_for_hf(model, str(tmp), safe_serialization=True, model_config=dict(pretrained_cfg=tag),
                data_config=data_config(meta["img_size"]))
    for framework, filename in FRAMEWORK_FILES.items():
        save_atomic(WRITERS[framework](sd), tmp / filename)
    if (run / LOG).is_file():
        shutil.copyfile(run / LOG, tmp / LOG)
    row, _ = zoo_row(name, meta, file_digest(tmp / WEIGHTS), results)
    (tmp / ZOO_ROW).write_text(f"{ZOO_HEADER}\n{row}\n")
    (tmp / CARD).write_text(card(name, meta, run, license, dataset or str(meta.get("data") or "unknown"), row))
    (tmp / SUMS).write_text("".join(f"{file_digest(f)}  {f.name}\n" for f in sorted(tmp.iterdir())))
    readable = 0o666 & ~current_umask()  # safetensors writes its files 0600: a release is for others to read
    for f in tmp.iterdir():
        f.chmod(readable)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def verify(folder: str | Path) -> list[str]:
    """What a user checks after downloading: every file listed in SHA256SUMS has its checksum and
    loads, no file is unlisted, and timm builds the model from the folder. Returns the problems."""
    import safetensors.torch
    import timm

    folder = Path(folder)
    if not (folder / SUMS).is_file():
        return [f"{folder}: no {SUMS} (not a folder tools/publish.py wrote)"]
    listed, problems = {}, []
    for n, line in enumerate((folder / SUMS).read_text().splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64})  (.+)", line)
        if not m:
            problems.append(f"{SUMS}, line {n}: not '<sha256>  <file name>' ({line[:60]!r})")
        elif m.group(2) in (".", "..") or "/" in m.group(2) or "\\" in m.group(2):
            problems.append(f"{SUMS}, line {n}: names {m.group(2)!r}, which is not a file of this folder")
        else:
            listed[m.group(2)] = m.group(1)
    if problems:
        return problems
    problems = [f"{name}: not listed in {SUMS}" for name in sorted(p.name for p in folder.iterdir())
                if name not in listed and name != SUMS]
    for name, digest in listed.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: listed in {SUMS} but missing")
            continue
        if file_digest(path) != digest:
            problems.append(f"{name}: sha256 differs from {SUMS} (a corrupted or changed file)")
            continue
        try:
            if name.endswith(".safetensors"):
                safetensors.torch.load_file(path)
            elif name.endswith(".pth"):
                load_file(path)
            elif name.endswith(".json"):
                json.loads(path.read_text())
            elif name.endswith(".jsonl"):
                [json.loads(x) for x in path.read_text().splitlines() if x]
            elif name == CARD and not path.read_text().startswith("---\n"):
                problems.append(f"{name}: no YAML header")
        except (CheckpointError, ValueError, OSError, RuntimeError) as e:
            problems.append(f"{name}: does not load ({e})")
    if not problems:
        try:
            timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True)
        except (RuntimeError, ValueError, KeyError, FileNotFoundError) as e:
            problems.append(f"timm cannot build the model from the folder: {e}")
    return problems


def push(folder: str | Path, repo: str, token: str | None) -> str:
    """Upload a verified folder to the Hub repository ``repo`` (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    problems = verify(folder)
    if problems:
        raise PublishError(f"{folder} does not verify, not pushed:\n  " + "\n  ".join(problems))
    api = HfApi(token=token)
    api.create_repo(repo, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="SemAIM encoder (tools/publish.py)")
    return f"https://huggingface.co/{repo}"

