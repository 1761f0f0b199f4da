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
