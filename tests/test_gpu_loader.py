"""--loader gpu (semaim_core/gpu_loader.py) on the CPU: the same code with the CPU as the device.
It cuts the default loader's boxes (its pixels within the interpolation's tolerance), draws them
from torchvision's distribution, reads each image once per epoch over the ranks, draws the same
crops after a resume, names or skips unreadable images, and trains with the loader in the recipe."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_pretrain import cfg, params
from torchvision import transforms

from semaim_core.data import ImageDataset, SeededSamples, UnreadableImageError, pretrain_transform
from semaim_core.gpu_loader import EncodedSamples, Plan, pretraining_loader
from semaim_core.rundir import RunDirError
from semaim_core.trainer import ResumableSampler, Trainer

MEAN_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255  # normalized units back to 0-255 levels


def both_loaders(files, keys, size=96, **kw):
    """The default loader's and the gpu loader's images for the same (epoch, index) keys."""
    transform = pretrain_transform(size)
    images = ImageDataset(files, transform, **kw)
    default = torch.stack([SeededSamples(images, seed=7)[k][0] for k in keys])
    gpu, skipped = next(iter(pretraining_loader(images, 7, keys, len(keys), 0, 0, torch.device("cpu"))))
    return default, gpu, skipped


def test_it_cuts_the_default_loaders_boxes_and_flips(tiny_coco):
    """Over 3 epochs of 16 images, each of the gpu loader's crops is the default loader's within
    the interpolation's tolerance (tensor bicubic vs PIL's): a box or a flip drawn otherwise would
    differ by tens of levels on most pixels. Channels-last, as the model takes it."""
    files = sorted((tiny_coco / "train2017").glob("*.jpg"))[:16]
    for epoch in range(3):
        default, gpu, skipped = both_loaders(files, [(epoch, i) for i in range(16)])
        levels = ((default - gpu).abs() * MEAN_STD).flatten()
        assert levels.mean() < 0.5 and levels.quantile(0.999) <= 2.0, (levels.mean(), levels.quantile(0.999))
        assert gpu.is_contiguous(memory_format=torch.channels_last) and skipped == 0


def ks_statistic(a, b) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    grid = np.sort(np.concatenate([a, b]))
    return float(np.abs(np.searchsorted(np.sort(a), grid, side="right") / len(a)
                        - np.searchsorted(np.sort(b), grid, side="right") / len(b)).max())


def test_its_crops_follow_torchvisions_distribution():
    """Area fractions and aspect ratios of 4000 boxes drawn per sample seed, against 4000 from
    RandomResizedCrop.get_params on one running generator: a two-sample KS test at alpha = 0.001
    (critical value 1.949 x sqrt(2 / 4000))."""
    transform, (h, w) = pretrain_transform(224), (480, 640)
    draws = [Plan(transform).draw(seed, h, w) for seed in range(4000)]
    ours = [d["box"] for d in draws]
    torch.manual_seed(12345)
    crop = transform.transforms[0]
    theirs = [transforms.RandomResizedCrop.get_params(torch.empty(3, h, w), crop.scale, crop.ratio)
              for _ in range(4000)]
    critical = 1.949 * np.sqrt(2 / 4000)
    for measure in (lambda b: b[2] * b[3] / (h * w), lambda b: np.log(b[3] / b[2])):
        assert ks_statistic(np.array([measure(b) for b in ours]), np.array([measure(b) for b in theirs])) < critical
    assert abs(np.mean([d["flip"] for d in draws]) - 0.5) < 0.03


def test_each_image_once_per_epoch_over_two_ranks_and_the_same_crops_after_a_resume(tiny_coco):
    files = sorted((tiny_coco / "train2017").glob("*.jpg"))
    images = ImageDataset(files, pretrain_transform(64))
    samples = EncodedSamples(files, Plan(images.transform), 0)
    read = []
    for rank in (0, 1):
        sampler = ResumableSampler(len(files), rank, 2, seed=0, batch_size=4)
        sampler.set_epoch(3)
        read += [samples[key]["path"] for key in sampler]
    assert len(read) == len(set(read)) == 48  # 50 images, whole batches of 4 on 2 ranks: 2 left out this epoch

    sampler = ResumableSampler(len(files), 0, 1, seed=0, batch_size=4)

    def batches(start):
        sampler.set_epoch(2, start)
        return [b for b, _ in pretraining_loader(images, 0, sampler, 4, 0, 2, torch.device("cpu"))]

    straight, resumed = batches(0), batches(5)
    assert len(resumed) == len(straight) - 5 and all(torch.equal(a, b) for a, b in zip(straight[5:], resumed))


def test_an_image_it_cannot_decode_on_the_device_is_decoded_by_pil_named_or_skipped(tiny_coco, tmp_path):
    """A PNG (not a JPEG) goes to PIL and matches the default loader; a JPEG whose data is cut off
    passes the header check and fails to decode: named, or skipped and counted; a file that is not
    an image is named by the worker."""
    data = tmp_path / "images"
    shutil.copytree(tiny_coco / "train2017", data)
    files = sorted(data.glob("*.jpg"))[:4]
    png = files[0].with_suffix(".png")
    Image.open(files[0]).save(png)
    files[0] = png
    default, gpu, _ = both_loaders(files, [(0, i) for i in range(4)])
    assert ((default - gpu).abs() * MEAN_STD).mean() < 0.5

    files[1].write_bytes(files[1].read_bytes()[:2000])  # the header and a little of the scan
    with pytest.raises(UnreadableImageError, match=rf"cannot read image {files[1]}.*--skip-unreadable"):
        both_loaders(files, [(0, i) for i in range(4)])
    default, gpu, skipped = both_loaders(files, [(0, i) for i in range(4)], skip_unreadable=True)
    assert skipped == 1 and ((default - gpu).abs() * MEAN_STD).mean() < 0.5  # the same stand-in, the same crop

    files[2].write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match=f"cannot read image {files[2]}"):
        both_loaders(files, [(0, 2)])


def test_pretraining_with_the_gpu_loader_resumes_exactly_and_keeps_it_in_the_recipe(tiny_coco, tmp_path):
    """Steps 1-3, then 4-6 after a restart, end where 6 straight steps end, bit for bit; the loader
    is part of the recipe, so a restart with the other loader is refused, not silently mixed."""
    settings = dict(loader="gpu", epochs=3, depth=1, decoder_depth=1)
    straight = Trainer(cfg(tiny_coco, tmp_path / "a", max_steps=6, **settings))
    straight.fit()
    Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=3, **settings)).fit()
    resumed = Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=6, **settings))
    resumed.fit()
    a, b = params(straight), params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(r) for r in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and all(np.isfinite(r["loss"]) for r in rows)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["loader"] == "gpu"
    with pytest.raises(RunDirError, match="loader: 'gpu' -> '<unset>'"):  # unset: the default, torch
        Trainer(cfg(tiny_coco, tmp_path / "b", max_steps=7, **dict(settings, loader="torch")))


def test_the_linear_probes_and_the_evaluations_transforms_run_on_the_device_as_on_the_cpu(derived):
    """The linear probe's Resize + RandomCrop + flip and the evaluation's Resize + CenterCrop give
    the default loader's crops (within the interpolation's tolerance) for the same keys; the
    transforms with no device form (fine-tuning's RandAugment) are named."""
    from torchvision.datasets import ImageFolder

    from cls.data import loader
    from cls.finetune import parse_args
    from cls.finetune import transforms_for as finetune_transforms
    from cls.linprobe import transforms_for
    from semaim_core.errors import SettingError

    args = SimpleNamespace(img_size=64)
    for transform, shuffle in zip(transforms_for(args), (True, False)):
        folder = ImageFolder(derived / "crops" / "val", transform)
        default, gpu = (next(iter(loader(folder, 12, 0, 1, 0, shuffle, 5, False, kind, torch.device("cpu"))))
                        for kind in ("torch", "gpu"))
        assert torch.equal(default[1], gpu[1])  # the same images, in the same order
        levels = ((default[0] - gpu[0]).abs() * MEAN_STD).flatten()
        assert levels.mean() < 0.5 and levels.quantile(0.999) <= 2.0, (shuffle, levels.mean())
    with pytest.raises(SettingError, match=r"RandomResizedCropAndInterpolation \+ .* has no device form"):
        Plan(finetune_transforms(parse_args(["--data", "d", "--encoder", "e", "--output-dir", "o",
                                             "--img-size", "64"]))[0])
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--encoder", "e", "--output-dir", "o", "--loader", "gpu"])


@pytest.mark.slow(seconds=30)
def test_a_linear_probe_on_two_processes_scores_each_image_once_with_either_loader(derived, demo_encoder, tmp_path):
    """torchrun, 2 CPU processes (gloo): the probe trains and scores the 150 val crops once each,
    with the default loader and with the gpu one, to the same top-1 within a crop or two."""
    import os
    import subprocess
    import sys

    results = []
    for port, kind in ((29591, "torch"), (29592, "gpu")):
        out = tmp_path / kind
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                               str(port), "-m", "cls.linprobe", "--data", str(derived / "crops"), "--encoder",
                               str(demo_encoder[0]), "--output-dir", str(out), "--img-size", "64", "--batch-size", "16",
                               "--num-workers", "0", "--device", "cpu", "--epochs", "1", "--warmup-epochs", "0",
                               "--dtype", "fp32", "--loader", kind], capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads((out / "cls_metrics.json").read_text()))
    assert [r["provenance"]["images"] for r in results] == [150, 150]
    assert abs(results[0]["top1"] - results[1]["top1"]) <= 100 * 2 / 150
    assert json.loads((tmp_path / "gpu" / "run.json").read_text())["loader"] == "gpu"
