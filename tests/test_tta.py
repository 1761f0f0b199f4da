import pytest
import torch

from podium.errors import PodiumError
from podium.evaluation.tta import VIEWS, apply_views, merge_view_logits, parse_views, predict_with_tta, scale, shift

ALL_NAMES = [*VIEWS, "scale_0.9", "scale_1.1"]


def _model(n_classes: int = 4):
    torch.manual_seed(0)
    # Position-sensitive (no global pooling) so that views really change the logits.
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 12, n_classes))


def _batch(dtype=torch.float32, n=3):
    g = torch.Generator().manual_seed(1)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, 3, 16, 12), generator=g, dtype=torch.uint8)
    return torch.rand((n, 3, 16, 12), generator=g, dtype=dtype)


def test_identity_only_equals_plain_softmax_exactly():
    model, batch = _model(), _batch()
    expected = torch.softmax(model(batch), dim=1)
    got = predict_with_tta(model, batch, parse_views(["identity"]))
    assert torch.equal(got, expected)


def test_hflip_of_symmetric_image_equals_identity():
    half = _batch()[..., :6]
    symmetric = torch.cat([half, torch.flip(half, dims=[-1])], dim=-1)
    model = _model()
    plain = predict_with_tta(model, symmetric, ["identity"])
    flipped = predict_with_tta(model, symmetric, ["hflip"])
    assert torch.allclose(plain, flipped)
    # and on a non-symmetric image the flip does change the prediction
    assert not torch.allclose(predict_with_tta(model, _batch(), ["identity"]), predict_with_tta(model, _batch(), ["hflip"]))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_views_keep_shape_and_dtype(name, dtype):
    batch = _batch(dtype)
    for view in parse_views([name]):
        out = view(batch)
        assert out.shape == batch.shape
        assert out.dtype == batch.dtype


def test_group_names_expand_to_several_views():
    assert len(parse_views(["five_crop"])) == 5
    assert len(parse_views(["shift"])) == 4
    assert len(parse_views(["brightness"])) == 2
    assert len(parse_views(["identity", "hflip", "scale_1.1"])) == 3
    # corner crops differ from each other
    views = parse_views(["five_crop"])
    batch = _batch()
    assert not torch.equal(views[0](batch), views[3](batch))


def test_scale_one_and_zero_shift_are_identity():
    batch = _batch(torch.uint8)
    assert torch.equal(scale(batch, 1.0), batch)
    assert torch.equal(shift(batch, 0.0, 0.0), batch)


def test_shift_moves_content():
    batch = torch.zeros(1, 1, 50, 50)
    batch[..., 20, 20] = 1.0
    out = shift(batch, 0.04, 0.0)  # 2 px right
    assert out[..., 20, 22] == 1.0 and out[..., 20, 20] == 0.0
    out = shift(batch, 0.0, -0.04)  # 2 px up
    assert out[..., 18, 20] == 1.0


def test_brightness_clamps_uint8():
    batch = torch.full((1, 3, 4, 4), 250, dtype=torch.uint8)
    dark, bright = (v(batch) for v in parse_views(["brightness"]))
    assert int(dark.max()) == 225 and int(bright.min()) == 255


@pytest.mark.parametrize("merge", ["mean", "gmean"])
def test_merged_rows_sum_to_one(merge):
    probs = predict_with_tta(_model(), _batch(), ["identity", "hflip", "five_crop", "shift"], merge=merge)
    assert probs.shape == (3, 4)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-6)
    assert (probs >= 0).all()


def test_gmean_matches_renormalised_geometric_mean():
    logits = torch.randn(2 * 5, 3, generator=torch.Generator().manual_seed(2))
    p = torch.softmax(logits, dim=1).reshape(2, 5, 3)
    g = p.prod(dim=0).sqrt()
    expected = g / g.sum(dim=1, keepdim=True)
    assert torch.allclose(merge_view_logits(logits, 2, "gmean"), expected, atol=1e-6)
    assert torch.allclose(merge_view_logits(logits, 2, "mean"), p.mean(0), atol=1e-6)


def test_single_batched_forward_and_chunking():
    calls = []
    model = _model()

    def forward(x):
        calls.append(len(x))
        return model(x)

    views = parse_views(["identity", "hflip", "vflip"])
    full = predict_with_tta(forward, _batch(), views)
    assert calls == [9]
    calls.clear()
    chunked = predict_with_tta(forward, _batch(), views, chunk=4)
    assert calls == [4, 4, 1]
    assert torch.allclose(full, chunked, atol=1e-6)


def test_apply_views_is_view_major():
    batch = _batch(n=2)
    stacked = apply_views(batch, parse_views(["identity", "hflip"]))
    assert torch.equal(stacked[:2], batch)
    assert torch.equal(stacked[2:], torch.flip(batch, dims=[-1]))


def test_unknown_view_name_lists_valid_names():
    with pytest.raises(PodiumError, match="hflip") as err:
        parse_views(["hflp"])
    assert "five_crop" in str(err.value) and "Did you mean 'hflip'" in str(err.value)


def test_bad_scale_factor_and_merge_are_refused():
    with pytest.raises(PodiumError, match="scale factor"):
        parse_views(["scale_9"])
    with pytest.raises(PodiumError, match="merge"):
        predict_with_tta(_model(), _batch(), ["identity"], merge="median")
