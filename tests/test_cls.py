"""cls/: fine-tuning, linear probing and k-NN on the bundled object crops."""
import json

import pytest
import torch



@pytest.fixture
def encoder(demo_encoder):
    return demo_encoder[0]  # pretrained at 96 px: the 64 px runs below resize its position table


def common(derived, encoder, out):
    return ["--data", str(derived / "crops"), "--encoder", str(encoder), "--output-dir", str(out),
            "--img-size", "64", "--batch-size", "32", "--num-workers", "0", "--device", "cpu"]


def test_finetune_writes_metrics_and_resumes(derived, encoder, tmp_path):
    from cls.finetune import main

    args = common(derived, encoder, tmp_path) + ["--warmup-epochs", "1", "--dtype", "fp32"]
    first = main(args + ["--epochs", "1"])
    assert first["mode"] == "finetune" and 0 <= first["top1"] <= 100 and first["top5"] >= first["top1"]
    before = torch.load(tmp_path / "checkpoint.pth", weights_only=False)["model"]["blocks.0.attn.qkv.weight"]
    second = main(args + ["--epochs", "2"])  # resumes at epoch 1
    assert second["epochs"] == 2
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    after = torch.load(tmp_path / "checkpoint.pth", weights_only=False)["model"]["blocks.0.attn.qkv.weight"]
    assert not torch.equal(before, after)
    assert json.loads((tmp_path / "cls_metrics.json").read_text())["top1"] == second["top1"]
    again = main(args + ["--epochs", "2"])  # a finished run, started again, only re-scores
    assert again["epochs"] == 2 and again["top1"] == second["top1"]
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_linear_probe_trains_only_the_head(derived, encoder, tmp_path):
    from cls.linprobe import main

    result = main(common(derived, encoder, tmp_path) + ["--epochs", "1", "--warmup-epochs", "0", "--dtype", "fp32"])
    assert result["mode"] == "linprobe"
    sd = torch.load(tmp_path / "checkpoint.pth", weights_only=False)["model"]
    from semaim_core.checkpoint import read_encoder
    enc, _ = read_encoder(encoder)
    assert torch.equal(sd["blocks.1.mlp.fc2.weight"], enc["blocks.1.mlp.fc2.weight"])  # frozen
    assert "head.0.running_mean" in sd  # BatchNorm without affine, then the linear layer


def test_knn(derived, encoder, tmp_path):
    from cls.knn import knn_classify, main

    result = main(common(derived, encoder, tmp_path))
    assert result["mode"] == "knn" and 0 <= result["top1"] <= 100
    # the vote: nearest neighbours of a point that is itself in the training set
    train = torch.nn.functional.normalize(torch.randn(10, 4), dim=1)
    labels = torch.arange(10) % 3
    assert torch.equal(knn_classify(train, labels, train, 3, k=1).argmax(1), labels)


def test_missing_data_is_named(encoder, tmp_path):
    from cls.knn import main

    with pytest.raises(FileNotFoundError, match="train/<class>"):
        main(["--data", str(tmp_path), "--encoder", str(encoder), "--output-dir", str(tmp_path / "o"), "--device", "cpu"])
