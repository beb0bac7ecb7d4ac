"""Hand values, ignore handling and empty batches of the per-task losses."""
import math

import pytest
import torch

from mtlbench.losses import LOSSES, build_loss, postprocess
from mtlbench.tasks import TASKS

LN2 = math.log(2.0)


def test_every_task_loss_is_buildable():
    for task, spec in TASKS.items():
        assert type(build_loss(spec.loss)) is LOSSES[spec.loss]
        assert type(build_loss(task)) is LOSSES[spec.loss]
    with pytest.raises(KeyError):
        build_loss('nope')


def test_cross_entropy_hand_value_and_ignore():
    # pixel 1: uniform logits, target 0 -> ln 2; pixel 2: confident but ignored
    logits = torch.tensor([[[[0.0, 5.0]], [[0.0, -5.0]]]], requires_grad=True)   # [1, 2, 1, 2]
    target = torch.tensor([[[0, 255]]])
    loss = build_loss('cross_entropy')(logits, target)
    assert loss.item() == pytest.approx(LN2)
    # mean over valid pixels of the batch (not per image)
    logits2 = torch.zeros(2, 3, 1, 2)
    target2 = torch.tensor([[[0, 255]], [[1, 2]]])
    assert build_loss('cross_entropy')(logits2, target2).item() == pytest.approx(math.log(3))


def test_cross_entropy_channels_last_equals_nchw():
    """Channels-last logits (what the heads emit) take a row-wise path: same loss and gradient."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    target[0, :2] = 255
    results = []
    for x in (logits.clone(), logits.contiguous(memory_format=torch.channels_last)):
        x.requires_grad_()
        loss = build_loss('cross_entropy')(x, target)
        loss.backward()
        results.append((loss, x.grad))
    assert results[1][1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_balanced_bce_hand_value():
    # z = 0 everywhere; valid targets 1, 0, 0 -> w = 2/3; the 255 pixel is ignored
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[1, 0], [0, 255]]])
    loss = build_loss('balanced_bce')(logits, target)
    # (w ln2 + (1-w) ln2 + (1-w) ln2) / 3 = (2/3 + 1/3 + 1/3) ln2 / 3
    assert loss.item() == pytest.approx(4 / 9 * LN2)
    loss.backward()
    assert logits.grad[0, 0, 1, 1] == 0


def test_balanced_bce_matches_formula_and_is_stable():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 1, 3, 4, generator=gen) * 3
    y = torch.randint(0, 2, (2, 3, 4), generator=gen)
    y[0, 0, 0] = 255
    valid = y != 255
    yf = (y == 1).float()
    w = ((1 - yf) * valid).sum() / valid.sum()
    s = torch.sigmoid(z[:, 0])
    ref = -(w * yf * torch.log(s) + (1 - w) * (1 - yf) * torch.log(1 - s))[valid].mean()
    assert build_loss('balanced_bce')(z, y).item() == pytest.approx(ref.item(), rel=1e-5)
    big = torch.tensor([[[[100.0, -100.0]]]])
    out = build_loss('balanced_bce')(big, torch.tensor([[[0, 1]]]))
    assert torch.isfinite(out) and out.item() == pytest.approx(50.0, rel=1e-4)


def test_normals_l1_hand_value():
    up = torch.tensor([0.0, 0.0, 1.0])
    pred = torch.stack([torch.tensor([0.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, 0.0]),
                        torch.tensor([5.0, 5.0, 5.0])], dim=1).reshape(1, 3, 1, 3)
    target = torch.stack([up, up, torch.zeros(3)], dim=1).reshape(1, 3, 1, 3)
    # pixel 1: exact after normalisation; pixel 2: |1| + 0 + |-1| = 2; pixel 3 invalid
    loss = build_loss('normals_l1')(pred, target)
    assert loss.item() == pytest.approx(2 / 6)


def test_depth_l1_hand_value():
    pred = torch.tensor([1.0, 5.0, 3.0]).reshape(1, 1, 1, 3)
    target = torch.tensor([2.0, 0.0, 3.5]).reshape(1, 1, 1, 3)
    assert build_loss('depth_l1')(pred, target).item() == pytest.approx((1.0 + 0.5) / 2)


@pytest.mark.parametrize('name,pred_shape,target', [
    ('cross_entropy', (2, 4, 3, 3), torch.full((2, 3, 3), 255)),
    ('balanced_bce', (2, 1, 3, 3), torch.full((2, 3, 3), 255)),
    ('normals_l1', (2, 3, 3, 3), torch.zeros(2, 3, 3, 3)),
    ('depth_l1', (2, 1, 3, 3), torch.zeros(2, 1, 3, 3)),
])
def test_zero_valid_batch_gives_zero_with_grad(name, pred_shape, target):
    pred = torch.randn(*pred_shape, requires_grad=True)
    loss = build_loss(name)(pred, target)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        build_loss('cross_entropy')(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, dtype=torch.long))


def test_postprocess_formats():
    raw = torch.randn(2, 5, 4, 3)
    seg = postprocess('semseg', raw)
    assert seg.shape == (2, 4, 3) and seg.dtype == torch.int64
    assert torch.equal(seg, raw.argmax(1))
    sal = postprocess('sal', raw[:, :1])
    assert sal.shape == (2, 4, 3) and torch.allclose(sal, torch.sigmoid(raw[:, 0]))
    nrm = postprocess('normals', raw[:, :3])
    assert nrm.shape == (2, 3, 4, 3) and torch.allclose(nrm.norm(dim=1), torch.ones(2, 4, 3))
    dep = postprocess('depth', -raw[:, :1].abs())
    assert torch.equal(dep, -raw[:, :1].abs())                 # raw, no ReLU
