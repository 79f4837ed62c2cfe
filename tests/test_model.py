"""SemAIM model: the sorted-causal attention equals the dense-mask reference, and the masks mean
what the paper says."""
import pytest
import torch

from semaim_core import build_model
from semaim_core.model import dense_masks
from semaim_core.orders import ORDERS


def tiny(img_size=64, depth=4, decoder_depth=2, **kw):
    torch.manual_seed(0)
    return build_model("semaim_vit_tiny_patch16", img_size=img_size, depth=depth, decoder_depth=decoder_depth,
                       embed_dim=64, num_heads=2, **kw).double()


def loss_and_grads(model, images, order_scores, attention):
    model.attention = attention
    model.zero_grad()
    out = model(images, order_scores=order_scores)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("img_size,depth,decoder_depth", [(64, 4, 4), (48, 4, 2), (64, 2, 1), ((32, 80), 4, 2)])
def test_sorted_equals_dense(order, img_size, depth, decoder_depth):
    model = tiny(img_size if isinstance(img_size, int) else 64, depth, decoder_depth, order=order)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    images = torch.randn(3, 3, h, w, dtype=torch.float64)
    with torch.no_grad():
        scores, _ = model.make_order(images)
    sorted_out, sorted_grads = loss_and_grads(model, images, scores, "sorted")
    dense_out, dense_grads = loss_and_grads(model, images, scores, "dense")
    torch.testing.assert_close(sorted_out.loss, dense_out.loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sorted_out.patch_loss, dense_out.patch_loss, rtol=1e-10, atol=1e-12)
    assert sorted_grads.keys() == dense_grads.keys() and len(sorted_grads) > 20
    for name in sorted_grads:
        torch.testing.assert_close(sorted_grads[name], dense_grads[name], rtol=1e-8, atol=1e-10, msg=name)


def test_sorted_equals_dense_float32():
    model = tiny().float()
    images = torch.randn(2, 3, 64, 64)
    scores = torch.rand(2, 16)
    a, ga = loss_and_grads(model, images, scores, "sorted")
    b, gb = loss_and_grads(model, images, scores, "dense")
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-5, msg=name)


def test_dense_masks_follow_the_paper():
    scores = torch.tensor([[2.0, 0.5, 3.0, 1.0]])
    enc, dec = (m[0, 0] for m in dense_masks(scores))
    n = scores.shape[1]
    assert enc.shape == (n + 1, n + 1) and dec.shape == (n, n + 1)
    assert enc[0].tolist() == [True] + [False] * n           # [CLS] attends only to itself
    assert enc[1:, 0].all() and dec[:, 0].all()              # everyone attends to [CLS]
    assert enc.diagonal().all()                              # an encoder token sees itself
    assert not dec[:, 1:].diagonal().any()                   # no query sees its own patch
    first = scores[0].argmin()
    assert dec[first].tolist() == [True] + [False] * n        # the first patch: from [CLS] alone
    for i in range(n):
        for j in range(n):
            assert enc[i + 1, j + 1] == (scores[0, j] <= scores[0, i])
            assert dec[i, j + 1] == (scores[0, j] < scores[0, i])


@pytest.mark.parametrize("attention", ["sorted", "dense"])
def test_each_prediction_depends_on_exactly_the_earlier_patches(attention):
    """Gradient of patch i's prediction w.r.t. the patch tokens: nonzero exactly where C_j < C_i."""
    model = tiny(depth=2, decoder_depth=2)
    model.attention = attention
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    x, cls, pos = model.embed(images)
    x = x.detach().requires_grad_(True)
    cls = cls.detach().requires_grad_(True)
    scores = torch.randperm(16).double()[None]
    pred, idx = model.forward_encoder_decoder(x, cls, pos, scores)
    if idx is not None:  # back to raster order
        pred = torch.empty_like(pred).scatter_(1, idx[..., None].expand_as(pred), pred)
    for i in range(16):
        gx, gc = torch.autograd.grad(pred[0, i].sum(), (x, cls), retain_graph=True)
        seen = gx[0].abs().sum(-1) > 0
        assert seen.tolist() == (scores[0] < scores[0, i]).tolist(), f"patch {i}"
        assert gc.abs().sum() > 0  # [CLS] is always visible
    first = int(scores[0].argmin())
    gx, = torch.autograd.grad(pred[0, first].sum(), x, retain_graph=True)
    assert gx.abs().sum() == 0  # the first patch is predicted from [CLS] alone


def test_forward_returns_loss_patch_loss_and_order():
    model = tiny().float()
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    assert out.loss.ndim == 0 and out.patch_loss.shape == (2, 16) and out.order_scores.shape == (2, 16)
    torch.testing.assert_close(out.loss, out.patch_loss.mean())
    assert out.similarity is not None and torch.allclose(out.similarity.sum(-1), torch.ones(2))
    replay = model(images, order_scores=out.order_scores)  # a generated order replays exactly
    torch.testing.assert_close(replay.loss, out.loss)


def test_any_size_divisible_by_the_patch():
    model = tiny(img_size=64).float()
    assert model(torch.randn(1, 3, 96, 48)).patch_loss.shape == (1, 18)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(1, 3, 100, 64))


def test_similarity_pass_has_no_drop_path_and_no_grad():
    model = tiny(drop_path_rate=0.5).float().train()
    images = torch.randn(2, 3, 64, 64)
    s1 = model.forward_similarity(images)
    s2 = model.forward_similarity(images)
    torch.testing.assert_close(s1, s2)  # deterministic although drop path is on in training
    assert not s1.requires_grad and model.training


@pytest.mark.parametrize("settings,message", [
    (dict(depth=4, decoder_depth=3), "must divide"),
    (dict(order="spiral"), "unknown order"),
    (dict(attention="flash"), "unknown attention"),
    (dict(similarity_precision="fp8"), "unknown similarity_precision"),
    (dict(similarity_source="teacher"), "needs a feature target"),
    (dict(float8=True), "cannot stay fp32: add similarity_precision='autocast'"),
])
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        tiny(**settings)


def test_an_unknown_model_size_is_named():
    with pytest.raises(ValueError, match="unknown model 'semaim_vit_gigantic_patch16': choose one of"):
        build_model("semaim_vit_gigantic_patch16")


@pytest.mark.parametrize("attention", ["sorted", "dense"])
def test_grad_checkpointing_gives_the_same_loss_and_gradients(attention):
    """Recomputing the blocks in backward (drop path on, so the RNG must be replayed) changes nothing."""
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    results = []
    for enable in (False, True):
        model = tiny(drop_path_rate=0.3, attention=attention)
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)
        out = model(images)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    assert torch.equal(loss, loss_ckpt) and grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-12, atol=1e-12, msg=name)


def test_float8_puts_only_the_block_matmuls_in_fp8():
    """--float8 swaps the blocks' Linear layers for torchao's Float8Linear; the weights, their names
    (checkpoints, exports) and everything outside the blocks stay as they are."""
    kw = dict(img_size=64, depth=2, decoder_depth=2, embed_dim=64, num_heads=2, similarity_precision="autocast")
    torch.manual_seed(0)
    plain = build_model("semaim_vit_tiny_patch16", **kw)
    torch.manual_seed(0)
    fp8 = build_model("semaim_vit_tiny_patch16", float8=True, **kw)
    assert plain.state_dict().keys() == fp8.state_dict().keys()
    assert all(torch.equal(v, fp8.state_dict()[k]) for k, v in plain.state_dict().items())
    linears = {n: type(m).__name__ for n, m in fp8.named_modules() if isinstance(m, torch.nn.Linear)}
    in_blocks = {n for n in linears if n.startswith(("blocks.", "decoder_blocks."))}
    assert len(in_blocks) == 2 * 4 + 2 * 5  # qkv, proj, fc1, fc2; q, kv, proj, fc1, fc2
    assert {n for n, kind in linears.items() if kind == "Float8Linear"} == in_blocks  # decoder_pred stays

    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        order_scores, _ = plain.make_order(images)
    losses = []
    for model in (plain, fp8):
        out = model(images, order_scores=order_scores)
        out.loss.backward()
        losses.append(out.loss.item())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    assert losses[1] != losses[0] and losses[1] == pytest.approx(losses[0], rel=2e-2)  # FP8 rounding, not a new model

    kw.update(similarity_source="ema", similarity_precision="fp32")
    ema = build_model("semaim_vit_tiny_patch16", float8=True, **kw)
    assert not any(type(m).__name__ == "Float8Linear" for m in ema.ema_encoder.modules())  # its pass stays fp32
