import math

import pytest
import torch
from monai.losses import DiceLoss

from lacunes.losses import BlobLoss, DiceBCELoss


def volume(*boxes, shape=(1, 1, 8, 8, 4)):
    """Instance map with instance i+1 filling boxes[i] (slices over x, y, z)."""
    inst = torch.zeros(shape, dtype=torch.long)
    for i, box in enumerate(boxes):
        inst[(0, 0, *box)] = i + 1
    return inst


def test_hand_computed_value():
    # 4 voxels, logits 0 (p = 0.5), 2 lesion voxels forming one instance.
    logits = torch.zeros(1, 1, 4, 1, 1)
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 4, 1, 1)
    main = DiceBCELoss()(logits, target)
    expected_main = math.log(2) + (1 - (2 * 1.0 + 1e-5) / (2 + 2 + 1e-5))
    assert float(main) == pytest.approx(expected_main, rel=1e-6)
    total = BlobLoss()(logits, target)
    # one instance whose region is the whole element: blob term = main term
    assert float(total) == pytest.approx(0.99 * expected_main, rel=1e-6)
    terms = BlobLoss().terms(logits, target)
    assert float(terms.total) == pytest.approx(float(total), rel=1e-6)
    assert terms.main == pytest.approx(expected_main, rel=1e-6) and terms.blob == pytest.approx(expected_main, rel=1e-6)


def test_perfect_lesion_costs_nothing_however_bad_the_others():
    inst = volume((slice(0, 2), slice(0, 2), slice(0, 2)), (slice(5, 7), slice(5, 7), slice(1, 3)))
    logits = torch.full(inst.shape, -20.0)
    logits[inst == 1] = 20.0  # instance 1 perfect, instance 2 entirely missed
    loss = BlobLoss(blob_criterion=DiceLoss(sigmoid=True))
    blob = loss.blob_term(logits, inst)
    # instance 1: Dice loss ~0 (instance 2 excluded, not counted as 0.5 voxels); instance 2: ~1
    assert float(blob) == pytest.approx(0.5, abs=1e-4)
    # the "set other instances to logit 0" shortcut would charge instance 1 for instance 2's voxels
    masked = logits.clone()
    masked[inst == 2] = 0.0
    wrong = DiceLoss(sigmoid=True)(masked, (inst == 1).float())
    assert float(wrong) == pytest.approx(1 - 16 / (8 + 8 + 8 * 0.5), abs=1e-4)  # = 0.2


def test_other_instances_get_no_gradient_from_an_instance_term():
    inst = volume((slice(0, 2), slice(0, 2), slice(0, 2)), (slice(5, 7), slice(5, 7), slice(1, 3)))
    calls = []

    def first_only(pred, tgt):
        calls.append(pred.numel())
        crit = DiceBCELoss()(pred, tgt)
        return crit if len(calls) == 1 else crit * 0.0

    logits = torch.randn(inst.shape, requires_grad=True)
    loss = BlobLoss(blob_criterion=first_only, alpha=0.0, beta=1.0)
    loss(logits, (inst > 0).float(), inst).backward()
    n_bg = int((inst == 0).sum())
    assert calls == [n_bg + 8, n_bg + 8]  # each region: its instance + background
    grad = logits.grad[0, 0]
    assert (grad[inst[0, 0] == 2] == 0).all()
    assert (grad[inst[0, 0] == 1] != 0).all() and (grad[inst[0, 0] == 0] != 0).any()


def test_elements_without_instances_add_nothing():
    with_lesion = volume((slice(2, 4), slice(2, 4), slice(0, 2)))
    inst = torch.cat([torch.zeros_like(with_lesion), with_lesion])
    logits = torch.randn(inst.shape)
    loss = BlobLoss()
    both = loss.blob_term(logits, inst)
    alone = loss.blob_term(logits[1:], inst[1:])
    assert float(both) == pytest.approx(float(alone), rel=1e-6)


def test_batch_without_instances_is_the_main_loss_with_gradient():
    logits = torch.randn(2, 1, 8, 8, 4, requires_grad=True)
    target = torch.zeros_like(logits)
    loss = BlobLoss(alpha=0.66, beta=0.33)
    value = loss(logits, target)
    assert float(value.detach()) == pytest.approx(0.66 * float(DiceBCELoss()(logits, target).detach()), rel=1e-6)
    value.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    terms = loss.terms(logits, target)
    assert terms.blob is None and terms.main == pytest.approx(float(DiceBCELoss()(logits, target).detach()), rel=1e-6)


def test_alpha_beta_edges():
    inst = volume((slice(0, 3), slice(0, 3), slice(0, 2)), (slice(5, 7), slice(5, 7), slice(1, 3)))
    target = (inst > 0).float()
    logits = torch.randn(inst.shape)
    main = float(DiceBCELoss()(logits, target))
    blob = float(BlobLoss().blob_term(logits, inst))
    assert float(BlobLoss(alpha=1.0, beta=0.0)(logits, target, inst)) == pytest.approx(main, rel=1e-6)
    assert float(BlobLoss(alpha=0.0, beta=1.0)(logits, target, inst)) == pytest.approx(blob, rel=1e-6)
    assert float(BlobLoss()(logits, target, inst)) == pytest.approx(0.66 * main + 0.33 * blob, rel=1e-6)
    with pytest.raises(ValueError, match="alpha and beta"):
        BlobLoss(beta=-1.0)


def test_labels_a_binary_target_itself_with_the_chosen_connectivity():
    target = torch.zeros(1, 1, 6, 6, 3)
    target[0, 0, 1, 1, 1] = 1
    target[0, 0, 2, 2, 1] = 1  # diagonal neighbour: one lesion at 26-, two at 6-connectivity
    assert int(BlobLoss(connectivity=26).label(target).max()) == 1
    assert int(BlobLoss(connectivity=6).label(target).max()) == 2
    logits = torch.randn(target.shape)
    given = BlobLoss()(logits, target, BlobLoss().label(target))
    assert float(BlobLoss()(logits, target)) == pytest.approx(float(given))


def test_shape_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        BlobLoss()(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 2))


def test_batch_dice_penalizes_false_positives_in_lesion_free_crops():
    logits = torch.full((2, 1, 8, 8, 8), -8.0)
    logits[0, 0, 2:4, 2:4, 2:4] = 8.0  # crop 0: its lesion, predicted right
    target = (logits > 0).float()
    logits[1, 0, 5:7, 5:7, 5:7] = 1.0  # crop 1 has no lesion: a false positive (p = 0.73)
    grads = {}
    for batch in (False, True):
        x = logits.clone().requires_grad_(True)
        DiceBCELoss(bce_weight=0.0, batch=batch)(x, target).backward()
        grads[batch] = x.grad[1, 0, 5:7, 5:7, 5:7].abs().max().item()
    assert grads[False] < 1e-6  # per crop: a lesion-free crop's Dice is ~1 whatever it predicts
    assert grads[True] > 1e-3
