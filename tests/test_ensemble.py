import numpy as np
import pandas as pd
import pytest
import torch

from podium.errors import PodiumError
from podium.evaluation import biases
from podium.evaluation import ensemble as ens
from podium.model import averaging


def _probs(n=60, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(c), size=n)


def _noisy_member(y, c, sharpness, seed):
    """Probabilities that favour the true class by ``sharpness`` (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), c))
    logits[np.arange(len(y)), y] += sharpness
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------- voting


@pytest.mark.parametrize("name", ["soft", "weighted", "hard", "rank"])
def test_identical_members_equal_the_member(name):
    p = _probs()
    voter = ens.create_voter(name)
    weights = [0.2, 0.5, 0.3]
    got = voter([p, p, p], weights)
    single = voter([p], [1.0])
    np.testing.assert_allclose(got, single, atol=1e-12)
    np.testing.assert_array_equal(got.argmax(axis=1), p.argmax(axis=1) if name != "rank" else single.argmax(axis=1))
    if name in ("soft", "weighted"):
        np.testing.assert_allclose(got, p, atol=1e-12)
    if name == "hard":
        np.testing.assert_allclose(got, np.eye(4)[p.argmax(axis=1)], atol=1e-8)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)


def test_hard_vote_majority_and_tie_break_by_summed_probability():
    a = np.array([[0.6, 0.4], [0.9, 0.1]])
    b = np.array([[0.1, 0.9], [0.8, 0.2]])
    c = np.array([[0.55, 0.45], [0.3, 0.7]])
    # row 0: votes 2 vs 1 for class 0, row 1: votes 2 vs 1 for class 0
    np.testing.assert_array_equal(ens.hard_vote([a, b, c]).argmax(axis=1), [0, 0])
    # two members tie 1-1: class 1 has the larger summed probability in row 0 (1.3 vs 0.7)
    np.testing.assert_array_equal(ens.hard_vote([a, b]).argmax(axis=1)[0], 1)
    # weights break the tie the other way
    np.testing.assert_array_equal(ens.hard_vote([a, b], weights=[0.7, 0.3]).argmax(axis=1)[0], 0)


def test_rank_average_ignores_calibration():
    p = _probs()
    sharpened = p**3  # monotone per class: same ranks, different calibration
    np.testing.assert_allclose(ens.rank_average([sharpened]), ens.rank_average([p]))
    assert ens.rank_average([p]).min() > 0


def test_voter_errors():
    p = _probs()
    with pytest.raises(PodiumError, match="valid: hard, rank, soft, weighted"):
        ens.create_voter("median")
    with pytest.raises(PodiumError, match="fit_weights"):
        ens.weighted_vote([p, p])
    with pytest.raises(PodiumError, match="shape"):
        ens.soft_vote([p, p[:10]])
    with pytest.raises(PodiumError, match="one weight per member"):
        ens.soft_vote([p, p], [1.0])
    with pytest.raises(PodiumError, match=">= 0"):
        ens.soft_vote([p, p], [1.0, -0.5])


# ---------------------------------------------------------------- weights


def test_fit_weights_prefers_the_better_member():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, size=400)
    good = _noisy_member(y, 5, sharpness=3.0, seed=1)
    weak = _noisy_member(y, 5, sharpness=0.5, seed=2)
    noise = _noisy_member(y, 5, sharpness=0.0, seed=4)
    w = ens.fit_weights([weak, good, noise], y, 5)
    assert w.shape == (3,)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0)
    assert w[1] > w[0] and w[1] > w[2] and w[1] > 0.6
    # deterministic, and never worse than equal weights on the fitting data
    np.testing.assert_array_equal(w, ens.fit_weights([weak, good, noise], y, 5))
    members = [weak, good, noise]
    fitted = ens._log_loss(ens.soft_vote(members, w), y)
    assert fitted <= ens._log_loss(ens.soft_vote(members), y) + 1e-12


def _imbalanced(n=600, seed=5):
    """Labels with a rare class (5%), scored by macro F1."""
    rng = np.random.default_rng(seed)
    return rng.choice(4, size=n, p=[0.45, 0.3, 0.2, 0.05])


def test_f1_weights_start_at_log_loss_weights_and_never_end_below_them():
    y = _imbalanced()
    members = [_noisy_member(y, 4, 1.6, seed=1), _noisy_member(y, 4, 1.2, seed=2), _noisy_member(y, 4, 0.0, seed=3)]
    start = ens.fit_weights(members, y, 4)
    w = ens.fit_weights_f1(members, y, 4, start=start)
    assert (w >= 0).all() and w.sum() == pytest.approx(1.0) and w[2] < 0.2  # the noise member is (nearly) out
    f1 = lambda weights: ens.macro_f1(y, ens.soft_vote(members, weights).argmax(1), 4)  # noqa: E731
    assert f1(w) >= f1(start)
    np.testing.assert_allclose(ens.fit_ensemble_weights(members, y, 4), w)


def test_f1_weights_never_end_below_the_best_member_on_the_fitting_rows():
    """Issue 19 item 3: the weighted ensemble scored below its best member. Whatever the start (here
    all weight on the noise member, far below the best member), the search ends at least at the best
    member's macro F1: each member alone (weight 1.0) is one of the candidates it tries."""
    y = _imbalanced()
    members = [_noisy_member(y, 4, 1.6, seed=1), _noisy_member(y, 4, 1.0, seed=2), _noisy_member(y, 4, 0.0, seed=3)]
    f1 = lambda weights: ens.macro_f1(y, ens.soft_vote(members, weights).argmax(1), 4)  # noqa: E731
    best_member = max(ens.macro_f1(y, m.argmax(1), 4) for m in members)
    start = np.array([0.0, 0.0, 1.0])
    assert f1(start) < best_member - 0.2
    assert f1(ens.fit_weights_f1(members, y, 4, start=start)) >= best_member
    assert f1(ens.fit_ensemble_weights(members, y, 4)) >= best_member


def test_nested_check_with_a_noise_member_is_not_below_the_best_member():
    """Issue 19's check: one member is noise; the weighted ensemble's nested score is not below the best member's."""
    y = _imbalanced()
    good, other, noise = (_noisy_member(y, 4, 1.6, seed=1), _noisy_member(y, 4, 1.4, seed=2),
                          _noisy_member(y, 4, 0.0, seed=3))
    report = ens.nested_ensemble_check([good, other, noise], y, 4, names=["good", "other", "noise"])
    assert report["ensemble_nested_f1"] >= report["best_member_nested_f1"] and report["beats_best_member"]
    assert report["n_splits"] == 5 and set(report["best_member_picked"]) <= {"good", "other"}


def test_nested_check_says_when_the_ensemble_does_not_beat_its_best_member():
    y = _imbalanced()
    good = _noisy_member(y, 4, 3.0, seed=1)
    report = ens.nested_ensemble_check([good, _noisy_member(y, 4, 0.0, seed=3)], y, 4, fit=None)  # equal weights
    assert report["ensemble_nested_f1"] < report["best_member_nested_f1"] and not report["beats_best_member"]
    groups = np.arange(len(y)) // 3  # three rows a group: a group never straddles fitting and held-back rows
    assert ens.nested_ensemble_check([good, good], y, 4, groups=groups)["grouped"]


def test_fit_weights_single_member_and_bad_labels():
    p = _probs(c=3)
    np.testing.assert_array_equal(ens.fit_weights([p], np.zeros(60, dtype=int), 3), [1.0])
    with pytest.raises(PodiumError, match="0..2"):
        ens.fit_weights([p, p], np.full(60, 3), 3)


# ---------------------------------------------------------------- multi-attribute


def test_compose_attribute_probs_mixed_radix():
    mask, gender, age = _probs(20, 3, 1), _probs(20, 2, 2), _probs(20, 3, 3)
    joint = ens.compose_attribute_probs([mask, gender, age])
    assert joint.shape == (20, 18)
    np.testing.assert_allclose(joint.sum(axis=1), 1.0)
    for m, g, a in [(0, 0, 0), (2, 1, 2), (1, 0, 2), (2, 0, 1)]:
        np.testing.assert_allclose(joint[:, m * 6 + g * 3 + a], mask[:, m] * gender[:, g] * age[:, a])
    idx = ens.composite_index([[2, 1], [1, 0], [2, 1]], (3, 2, 3))
    np.testing.assert_array_equal(idx, [17, 7])
    m, g, a = ens.split_composite_index(idx, (3, 2, 3))
    np.testing.assert_array_equal(m, [2, 1])
    np.testing.assert_array_equal(g, [1, 0])
    np.testing.assert_array_equal(a, [2, 1])


def test_vote_per_attribute_then_compose():
    m1 = [_probs(10, 3, 1), _probs(10, 2, 2)]
    m2 = [_probs(10, 3, 3), _probs(10, 2, 4)]
    got = ens.vote_per_attribute([m1, m2], "soft")
    expected = ens.compose_attribute_probs([(m1[0] + m2[0]) / 2, (m1[1] + m2[1]) / 2])
    np.testing.assert_allclose(got, expected)
    with pytest.raises(PodiumError, match="attribute heads"):
        ens.vote_per_attribute([m1, m2[:1]])


# ---------------------------------------------------------------- alignment


def _table(ids, classes, seed):
    p = _probs(len(ids), len(classes), seed)
    return pd.DataFrame({"id": ids, **{c: p[:, i] for i, c in enumerate(classes)}})


def test_align_members_reorders_rows_and_columns():
    classes = ["cat", "dog", "frog"]
    a = _table(["x", "y", "z", "w"], classes, 1)
    b = a.iloc[[2, 0, 3, 1]][["dog", "id", "frog", "cat"]].reset_index(drop=True)
    b.insert(1, "path", "/tmp/p")  # metadata columns are ignored
    pa, pb = ens.align_members([a, b])
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(pa, a[classes].to_numpy())


def test_align_members_refuses_different_ids():
    classes = ["cat", "dog"]
    a = _table(["x", "y", "z"], classes, 1)
    b = _table(["x", "y", "q"], classes, 2)
    with pytest.raises(PodiumError, match=r"model_b covers different images than model_a: 1 ids missing \(z\), 1 extra \(q\)"):
        ens.align_members([a, b], names=["model_a", "model_b"])


def test_align_members_refuses_different_classes_and_duplicates():
    a = _table(["x", "y"], ["cat", "dog"], 1)
    b = _table(["x", "y"], ["cat", "bird"], 2)
    with pytest.raises(PodiumError, match="member 2 class columns differ from member 1: missing dog, extra bird"):
        ens.align_members([a, b])
    dup = _table(["x", "x"], ["cat", "dog"], 3)
    with pytest.raises(PodiumError, match="duplicate ids: x"):
        ens.align_members([a, dup])
    with pytest.raises(PodiumError, match="no 'id' column"):
        ens.align_members([a.drop(columns="id")])


# ---------------------------------------------------------------- bias tuning


@pytest.mark.parametrize("seed", range(4))
def test_bias_tuning_never_lowers_fitting_f1(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 80)
    p = _noisy_member(y, 4, sharpness=1.0, seed=seed + 10)
    b = biases.fit_logit_biases(p, y, 4)
    before = ens.macro_f1(y, p.argmax(1), 4)
    after = ens.macro_f1(y, biases.apply_logit_biases(p, b).argmax(1), 4)
    assert after >= before


def _reference_bias_fit(p, y, c, n_rounds=3, grid=biases.DEFAULT_BIAS_GRID):
    """Plain full-argmax coordinate ascent, to check the fast path's decisions."""
    logp = np.log(np.clip(p, 1e-15, None))
    b = np.zeros(c)
    best = ens.macro_f1(y, logp.argmax(1), c)
    for _ in range(n_rounds):
        improved = False
        for k in range(c):
            for v in grid:
                if v == b[k]:
                    continue
                t = b.copy()
                t[k] = v
                s = ens.macro_f1(y, (logp + t).argmax(1), c)
                if s > best + 1e-12:
                    best, b, improved = s, t, True
        if not improved:
            break
    return b


def test_fast_bias_fit_matches_full_argmax_reference():
    rng = np.random.default_rng(11)
    y = rng.choice(4, size=120, p=[0.55, 0.25, 0.15, 0.05])
    p = _noisy_member(y, 4, sharpness=1.2, seed=12)
    p[:5] = p[5]  # exact ties between rows exercise the tie rule
    np.testing.assert_array_equal(biases.fit_logit_biases(p, y, 4), _reference_bias_fit(p, y, 4))


def _planted_rare_class(n_per_rep=1):
    """Class 2 is rare and its rows are always out-voted by class 0 at argmax."""
    rows, labels = [], []
    for _ in range(n_per_rep):
        rows += [[0.80, 0.10, 0.10]] * 40 + [[0.10, 0.80, 0.10]] * 40
        labels += [0] * 40 + [1] * 40
        rows += [[0.50, 0.10, 0.40]] * 8 + [[0.60, 0.05, 0.35]] * 2
        labels += [2] * 8 + [0] * 2
    return np.array(rows), np.array(labels)


def test_bias_tuning_raises_f1_when_rare_class_under_predicted():
    p, y = _planted_rare_class()
    before = ens.macro_f1(y, p.argmax(1), 3)
    b = biases.fit_logit_biases(p, y, 3)
    tuned = biases.apply_logit_biases(p, b)
    after = ens.macro_f1(y, tuned.argmax(1), 3)
    assert (p.argmax(1) == 2).sum() == 0
    assert after > before + 0.2
    assert b[2] > b[0]
    np.testing.assert_allclose(tuned.sum(1), 1.0)
    # zero biases leave probabilities unchanged
    np.testing.assert_allclose(biases.apply_logit_biases(p, np.zeros(3)), p)


def test_nested_bias_gain_scores_held_out_folds():
    p, y = _planted_rare_class(n_per_rep=5)
    report = biases.nested_bias_gain(p, y, 3, n_splits=5, seed=0)
    assert report["f1_before"] == pytest.approx(ens.macro_f1(y, p.argmax(1), 3))
    assert report["gain"] > 0.2 and report["p_gain"] >= 0.99 and report["recommended"]
    assert len(report["fold_f1_after"]) == 5 and len(report["biases"]) == 3
    # pure-noise probabilities: no honest gain to be found on held-out rows
    rng = np.random.default_rng(0)
    y_noise = rng.integers(0, 3, 150)
    noise = _probs(150, 3, 7)
    in_sample = ens.macro_f1(y_noise, biases.apply_logit_biases(noise, biases.fit_logit_biases(noise, y_noise, 3)).argmax(1), 3)
    held_out = biases.nested_bias_gain(noise, y_noise, 3)
    assert held_out["f1_after"] < in_sample and not held_out["recommended"]
    with pytest.raises(PodiumError, match="n_splits"):
        biases.nested_bias_gain(p[:3], y[:3], 3, n_splits=5)


def test_a_positive_bias_gain_that_a_resample_of_the_rows_would_lose_is_not_recommended():
    """One corrected row in 200 is a positive gain on these rows, but a bootstrap resample misses
    that row about 37% of the time: below the 80% bar. Thirty corrected rows survive every resample."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    before = np.where(rng.random(200) < 0.3, (y + 1) % 3, y)
    wrong = np.flatnonzero(before != y)
    one = before.copy()
    one[wrong[0]] = y[wrong[0]]
    assert ens.macro_f1(y, one, 3) > ens.macro_f1(y, before, 3)
    assert 0.5 < biases.bootstrap_gain_share(y, before, one, 3) < biases.BIAS_CONFIDENCE
    many = before.copy()
    many[wrong[:30]] = y[wrong[:30]]
    assert biases.bootstrap_gain_share(y, before, many, 3) == 1.0
    assert biases.bootstrap_gain_share(y, before, before, 3) == 0.0  # nothing changed: no gain to keep


# ---------------------------------------------------------------- checkpoints


def _ckpt(path, scale, steps, extra_key=None, shape=(2, 3)):
    state = {
        "model.weight": torch.full(shape, float(scale)),
        "model.bn.running_mean": torch.tensor([scale, 2 * scale], dtype=torch.float32),
        "model.bn.num_batches_tracked": torch.tensor(steps, dtype=torch.long),
        "model.half": torch.tensor([scale], dtype=torch.float16),
    }
    if extra_key:
        state[extra_key] = torch.zeros(1)
    torch.save({"state_dict": state, "epoch": steps, "hyper_parameters": {"lr": 0.1}}, path)
    return path


def test_average_checkpoints_is_the_mean(tmp_path):
    a = _ckpt(tmp_path / "a.ckpt", 1.0, 10)
    b = _ckpt(tmp_path / "b.ckpt", 4.0, 20)
    avg = averaging.average_checkpoints([a, b])
    assert torch.equal(avg["model.weight"], torch.full((2, 3), 2.5))
    assert torch.equal(avg["model.bn.running_mean"], torch.tensor([2.5, 5.0]))
    assert avg["model.bn.num_batches_tracked"].item() == 20
    assert avg["model.bn.num_batches_tracked"].dtype == torch.long
    assert avg["model.half"].dtype == torch.float16 and avg["model.half"].item() == 2.5
    assert list(avg) == list(torch.load(a, weights_only=False)["state_dict"])


def test_save_averaged_checkpoint_keeps_other_fields(tmp_path):
    a = _ckpt(tmp_path / "a.ckpt", 1.0, 10)
    b = _ckpt(tmp_path / "b.ckpt", 3.0, 20)
    out = averaging.save_averaged_checkpoint([a, b], tmp_path / "avg" / "averaged.ckpt")
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["epoch"] == 10 and ckpt["hyper_parameters"] == {"lr": 0.1}
    assert torch.equal(ckpt["state_dict"]["model.weight"], torch.full((2, 3), 2.0))
    assert [p.name for p in (tmp_path / "avg").iterdir()] == ["averaged.ckpt"]


def test_average_checkpoints_refuses_mismatches(tmp_path):
    a = _ckpt(tmp_path / "a.ckpt", 1.0, 10)
    wrong_shape = _ckpt(tmp_path / "s.ckpt", 1.0, 10, shape=(3, 3))
    extra = _ckpt(tmp_path / "e.ckpt", 1.0, 10, extra_key="head.bias")
    with pytest.raises(PodiumError, match=r"'model.weight' has shape \(2, 3\) vs \(3, 3\)"):
        averaging.average_checkpoints([a, wrong_shape])
    with pytest.raises(PodiumError, match="'head.bias' is missing"):
        averaging.average_checkpoints([a, extra])
    with pytest.raises(PodiumError, match="does not exist"):
        averaging.average_checkpoints([a, tmp_path / "nope.ckpt"])
    torch.save({"weights": {}}, tmp_path / "bare.pt")
    with pytest.raises(PodiumError, match="no 'state_dict'"):
        averaging.average_checkpoints([tmp_path / "bare.pt"])


# ---------------------------------------------------------------- report


def test_member_score_table():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 100)
    good, bad = _noisy_member(y, 3, 3.0, 1), _noisy_member(y, 3, 0.0, 2)
    table = ens.member_score_table(
        [good, bad], y, 3, names=["good", "bad"], ensembles={"soft": ens.soft_vote([good, bad])}, weights=[3, 1]
    )
    assert list(table["name"]) == ["good", "bad", "soft"]
    assert list(table["kind"]) == ["member", "member", "ensemble"]
    assert table.loc[0, "macro_f1"] > table.loc[1, "macro_f1"]
    assert table.loc[0, "accuracy"] == pytest.approx((good.argmax(1) == y).mean())
    assert table.loc[0, "weight"] == pytest.approx(0.75)
    assert np.isnan(table.loc[2, "weight"])
