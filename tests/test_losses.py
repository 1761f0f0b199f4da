import pytest
import torch

from podium.errors import PodiumError
from podium.model.losses import LOSSES, compute_class_weights, create_loss


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("weighted", [False, True])
def test_every_loss_trains_towards_the_target(name, weighted):
    torch.manual_seed(0)
    weights = torch.tensor([1.0, 2.0, 0.5]) if weighted else None
    loss_fn = create_loss(name, 3, class_weights=weights)
    logits = torch.zeros(12, 3, requires_grad=True)
    target = torch.arange(12) % 3
    opt = torch.optim.SGD([logits], lr=1.0)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert torch.isfinite(loss) and loss.item() < first
    assert (logits.argmax(1) == target).all()


def test_unknown_loss_suggests():
    with pytest.raises(PodiumError, match="unknown loss 'focall'.*Did you mean 'focal'"):
        create_loss("focall", 3)


def test_class_weights_modes():
    counts = [100, 10, 0]
    auto = compute_class_weights(counts, "auto")
    assert auto[1] / auto[0] == pytest.approx(10.0) and auto[2] == 0
    sq = compute_class_weights(counts, "sqrt")
    assert sq[1] / sq[0] == pytest.approx(10 ** 0.5)
    assert compute_class_weights(counts, "none") is None
    assert compute_class_weights([5, 5], [1, 3]).tolist() == [0.5, 1.5]
    with pytest.raises(PodiumError, match="2 values but there are 3 classes"):
        compute_class_weights(counts, [1, 2])


def test_focal_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    focal = create_loss("focal", 4, focal_gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-5)


def test_logit_adjusted_with_tau_zero_is_cross_entropy():
    torch.manual_seed(1)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    loss = create_loss("logit_adjusted", 3, class_counts=[100, 10, 1], logit_adjust_tau=0.0)(logits, target)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


def test_balanced_softmax_with_uniform_priors_is_cross_entropy():
    torch.manual_seed(2)
    logits, target = torch.randn(16, 4), torch.randint(0, 4, (16,))
    loss = create_loss("balanced_softmax", 4, class_counts=[7, 7, 7, 7])(logits, target)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


def test_logit_adjustment_adds_tau_log_priors_and_favours_rare_classes():
    torch.manual_seed(3)
    counts = torch.tensor([90.0, 9.0, 1.0])
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    shifted = logits + 0.5 * torch.log(counts / counts.sum())
    la = create_loss("logit_adjusted", 3, class_counts=counts.tolist(), logit_adjust_tau=0.5)(logits, target)
    assert la.item() == pytest.approx(torch.nn.functional.cross_entropy(shifted, target).item(), rel=1e-5)
    # Trained to the optimum on a balanced-looking batch, the raw logits of the rare class end up higher.
    z = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.SGD([z], lr=1.0)
    bs = create_loss("balanced_softmax", 3, class_counts=counts.tolist())
    for _ in range(200):
        opt.zero_grad()
        bs(z.expand(3, 3), torch.arange(3)).backward()
        opt.step()
    assert z[0, 2] > z[0, 1] > z[0, 0]


def test_logit_adjusted_checks_the_count_length():
    with pytest.raises(PodiumError, match="2 class counts given for 3 classes"):
        create_loss("logit_adjusted", 3, class_counts=[5, 5])


@pytest.mark.parametrize("name", ["ce", "label_smoothing", "logit_adjusted", "balanced_softmax"])
def test_soft_target_losses_take_one_hot_targets_like_indices(name):
    from podium.model.losses import SOFT_TARGET_LOSSES

    assert name in SOFT_TARGET_LOSSES
    torch.manual_seed(4)
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss_fn = create_loss(name, 3, class_counts=[50, 20, 5])
    soft = torch.nn.functional.one_hot(target, 3).float()
    assert loss_fn(logits, soft).item() == pytest.approx(loss_fn(logits, target).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["ce", "label_smoothing", "focal"])
def test_scaled_row_gradients_are_the_per_sample_weighted_loss(name):
    import torch.nn.functional as F

    from podium.model.losses import scale_row_gradients

    torch.manual_seed(1)
    classes = torch.tensor([1.0, 2.0, 0.5])
    loss_fn = create_loss(name, 3, class_weights=classes, label_smoothing=0.1, focal_gamma=2.0)
    logits = torch.randn(8, 3, requires_grad=True)
    target = torch.arange(8) % 3
    w = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 0.25, 1.0, 0.0])
    loss_fn(scale_row_gradients(logits, w), target).backward()
    got = logits.grad.clone()
    logits.grad = None
    c = classes[target]
    if name == "focal":
        ce = F.cross_entropy(logits, target, reduction="none")
        per_row = c * (1 - torch.exp(-ce)).pow(2.0) * ce
    else:  # torch's per-row terms, class weights (and their share of label smoothing) included
        per_row = F.cross_entropy(logits, target, weight=classes, reduction="none",
                                  label_smoothing=0.1 if name == "label_smoothing" else 0.0)
    ((w * per_row).sum() / c.sum()).backward()  # the weighted loss, normalised as the unweighted one
    assert torch.allclose(got, logits.grad, atol=1e-6)
    assert (got[w == 0] == 0).all() and got[w > 0].abs().sum() > 0
