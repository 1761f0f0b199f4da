"""`podium audit`: label issues from out-of-fold probabilities (cleanlab), per attribute and per
group, duplicates and outliers, bad input, and the review page's choices round-tripping into
`task.label_fixes` in headless Chromium.

Most tests plant a cv folder whose OOF probabilities come from a simulated model that knows
the true labels, with known flipped labels: exact and fast. `test_a_trained_cv_run_flags_its_flips`
trains a real (tiny) cv run on generated images with flipped labels.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import DevTools, chromium, wait_for
from conftest import make_image

from podium.cli import main
from podium.curation.audit import run_audit
from podium.errors import PodiumError
from podium.evaluation.tables import prediction_table
from podium.fileio import write_json, write_parquet, write_text
from podium.schema import config_to_yaml, load_config

COMPOSITE = {"mask": ["on", "off"], "gender": ["female", "male"], "age": ["young", "old"]}


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _images(root: Path, n: int, seed: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"img_{i:03d}.png"
        make_image((40 + 5 * (i % 40), 90, 200 - 3 * (i % 50)), size=32, seed=seed * 1000 + i).save(path)
        paths.append(str(path))
    return paths


def plant_cv(root: Path, given: list[str], probs: np.ndarray, classes: list[str], *, groups=None,
             extra: list[str] = (), k: int = 3) -> Path:
    """A finished cv folder as `podium cv` leaves it (cv.json, folds.csv, config.yaml, OOF table)."""
    paths = _images(root / "data", len(given))
    table = pd.DataFrame({"path": paths, "label": given})
    ids = [Path(p).name for p in paths]
    folds = np.arange(len(given)) % k
    run = root / "runs" / "cv"
    run.mkdir(parents=True)
    cfg = load_config(None, ["data.train=" + str(root / "data.csv"), "data.image_size=32", *extra])
    write_text(run / "config.yaml", config_to_yaml(cfg))
    write_json(run / "cv.json", {"k": k, "seed": 0, "classes": classes, "grouped": groups is not None,
                                 "n_images": len(given), "data": cfg.data.train})
    fold_table = pd.DataFrame({"id": ids, "path": paths, "label": given, "fold": folds})
    if groups is not None:
        fold_table.insert(3, "group", groups)
    fold_table.to_csv(run / "folds.csv", index=False)
    write_parquet(run / "oof_predictions.parquet",
                  prediction_table(ids, probs, classes, paths=paths, targets=given, extra={"fold": folds}))
    table.assign(id=ids).to_csv(root / "data.csv", index=False)
    return run


def test_flipped_labels_are_flagged_far_above_chance(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["cat", "dog", "fox"]
    true = rng.integers(0, 3, 150)
    given = true.copy()
    flips = rng.choice(150, 20, replace=False)
    given[flips] = (given[flips] + rng.integers(1, 3, 20)) % 3
    probs = _softmax(3.0 * np.eye(3)[true] + rng.normal(0, 1, (150, 3)))
    run = plant_cv(tmp_path, [classes[c] for c in given], probs, classes)
    result = run_audit(run, features=False, log=lambda *a: None)
    labels = result.issues[result.issues["kind"] == "label"]
    flagged = {int(i[4:7]) for i in labels["id"]}
    hits = flagged & set(flips.tolist())
    assert len(hits) / len(flagged) > 0.7 and len(hits) / len(flips) > 0.7, (len(flagged), len(hits))
    assert len(flips) / 150 < 0.15  # chance: the noise rate
    row = labels.iloc[0]
    assert row["attribute"] == "label" and row["suggested"] != row["given"]
    assert result.summary["kind"] == "cv" and "all 150 images" in result.summary["note"]
    quality = pd.read_csv(result.dir / "label_quality.csv")
    assert len(quality) == 150 and quality["flagged"].sum() == len(labels)
    assert result.dir == run / "audit" and (run / "audit" / "review.html").is_file()
    assert run_audit(run, features=False, log=lambda *a: None).dir == run / "audit-2"  # never overwritten


def test_the_audit_method_takes_effect_and_an_unknown_one_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    classes = ["cat", "dog", "fox"]
    given = rng.integers(0, 3, 120)
    probs = _softmax(2.0 * np.eye(3)[given] + rng.normal(0, 1.2, (120, 3)))
    run = plant_cv(tmp_path, [classes[c] for c in given], probs, classes)
    # predicted_neq_given flags exactly the images whose most likely class is not their label
    result = run_audit(run, features=False, method="predicted_neq_given", log=lambda *a: None)
    flagged = set(result.issues.loc[result.issues["kind"] == "label", "id"])
    expected = {f"img_{i:03d}.png" for i in np.flatnonzero(probs.argmax(1) != given)}
    assert flagged == expected and len(expected) > 5
    assert "filter_by=predicted_neq_given" in result.summary["method"]["labels"]
    default = run_audit(run, features=False, log=lambda *a: None)
    assert "filter_by=low_normalized_margin" in default.summary["method"]["labels"]
    assert set(default.issues.loc[default.issues["kind"] == "label", "id"]) != flagged
    import podium  # the API and the CLI take their default from curation.audit's DEFAULT_LABEL_METHOD
    from podium.cli import main

    assert podium.audit(run, features=False, log=lambda *a: None).summary["method"] == default.summary["method"]
    assert main(["audit", str(run), "--no-features", "--method", "predicted_neq_given"]) == 0
    with pytest.raises(PodiumError, match="valid: .*prune_by_noise_rate.*Did you mean 'low_normalized_margin'"):
        run_audit(run, features=False, method="low_normalised_margin", log=lambda *a: None)


def test_suggested_fixes_are_written_on_request_and_read_back(tmp_path, capsys):
    from podium.curation.audit import load_audit

    rng = np.random.default_rng(5)
    classes = ["cat", "dog", "fox"]
    true = rng.integers(0, 3, 90)
    given = true.copy()
    given[:9] = (given[:9] + 1) % 3
    run = plant_cv(tmp_path, [classes[c] for c in given], _softmax(3.0 * np.eye(3)[true] + rng.normal(0, 0.6, (90, 3))),
                   classes)
    out = tmp_path / "cli-audit"
    assert main(["audit", str(run), "--no-features", "--out", str(out), "--suggest", "drop"]) == 0
    assert "not applied" in capsys.readouterr().out
    audit = load_audit(out)  # the folder read back: the same issues and per-image quality
    assert len(audit.quality) == 90 and audit.issues["id"].map(type).eq(str).all()
    expected = audit.suggested_fixes(action="drop")
    written = pd.read_csv(out / "suggested_fixes.csv", dtype=str, keep_default_na=False)
    assert len(expected) >= 5 and list(written["id"]) == list(expected["id"]) and set(written["action"]) == {"drop"}
    assert {f"img_{i:03d}.png" for i in range(9)} & set(written["id"])
    assert main(["audit", str(run), "--no-features", "--out", str(tmp_path / "second")]) == 0
    assert not (tmp_path / "second" / "suggested_fixes.csv").exists()  # only when asked
    with pytest.raises(PodiumError, match="not an audit folder"):
        load_audit(tmp_path)


def _composite(tmp_path: Path):
    """30 people x 4 images: gender and age belong to the person, the mask to the image.
    Planted: person p03's gender is wrong on all 4 images; one image of p07 has the wrong age;
    two images carry the wrong mask."""
    rng = np.random.default_rng(1)
    people = [f"p{i:02d}" for i in range(30) for _ in range(4)]
    person = {p: (rng.integers(0, 2), rng.integers(0, 2)) for p in sorted(set(people))}
    truth = np.array([[rng.integers(0, 2), *person[p]] for p in people])
    given = truth.copy()
    given[[12, 13, 14, 15], 1] = 1 - given[[12, 13, 14, 15], 1]  # p03's gender
    given[29, 2] = 1 - given[29, 2]                              # one image of p07: age
    given[[40, 77], 0] = 1 - given[[40, 77], 0]                  # two masks
    names = list(COMPOSITE)
    marginals = [_softmax(4.0 * np.eye(2)[truth[:, j]] + rng.normal(0, 0.7, (len(people), 2))) for j in range(3)]
    from podium.tasks.attributes import AttributeTask, joint_from_marginals

    task = AttributeTask(COMPOSITE)
    classes = task.composite_names()
    label_names = ["/".join(COMPOSITE[n][g[j]] for j, n in enumerate(names)) for g in given]
    extra = [f"task.attributes={json.dumps(COMPOSITE)}"]
    return plant_cv(tmp_path, label_names, joint_from_marginals(marginals), classes, groups=people, extra=extra)


def test_a_composite_task_names_the_attribute_and_the_person(tmp_path):
    run = _composite(tmp_path)
    result = run_audit(run, features=False, log=lambda *a: None)
    issues = result.issues
    assert result.summary["group_attributes"] == ["gender", "age"]  # the mask changes within a person
    person = issues[(issues["kind"] == "group_label") & (issues["id"] == "p03")]
    assert len(person) == 1 and person.iloc[0]["attribute"] == "gender" and person.iloc[0]["scope"] == "group"
    assert "gender of the whole group probably wrong" in person.iloc[0]["detail"]
    disagree = issues[issues["kind"] == "group_disagrees"]
    assert disagree[["id", "attribute"]].values.tolist() == [["p07", "age"]]
    masks = issues[(issues["kind"] == "label")]
    assert set(masks["attribute"]) == {"mask"} and {"img_040.png", "img_077.png"} <= set(masks["id"])
    assert result.summary["label_issues_by_attribute"]["gender"] >= 1


def test_duplicates_with_other_labels_and_outliers(tmp_path):
    rng = np.random.default_rng(2)
    classes = ["a", "b"]
    true = np.arange(40) % 2
    probs = _softmax(3.0 * np.eye(2)[true] + rng.normal(0, 0.5, (40, 2)))
    run = plant_cv(tmp_path, [classes[c] for c in true], probs, classes)
    data = tmp_path / "data"
    (data / "img_001.png").write_bytes((data / "img_000.png").read_bytes())  # the same picture, labels a and b
    from PIL import Image

    Image.new("RGB", (6, 6), (10, 200, 10)).save(data / "img_002.png")      # tiny
    Image.new("RGB", (64, 64), (128, 128, 128)).save(data / "img_004.png")  # blank
    issues = run_audit(run, features=False, log=lambda *a: None).issues
    dup = issues[issues["kind"] == "duplicate"]
    assert dup[["id", "other_id"]].values.tolist() == [["img_000.png", "img_001.png"]]
    assert "labels differ ('a' / 'b')" in dup.iloc[0]["detail"]
    outliers = issues[issues["kind"] == "outlier"].set_index("id")["detail"]
    assert outliers["img_002.png"].startswith("tiny: 6x6 px") and outliers["img_004.png"].startswith("near-blank")


def test_bad_input_gets_one_message(tmp_path, capsys):
    from podium.rundir import write_status

    run = tmp_path / "run"
    cfg = load_config(None, ["data.image_size=32"])
    write_text(run / "config.yaml", config_to_yaml(cfg))
    write_json(run / "classes.json", {"classes": ["a", "b"]})
    write_status(run, "interrupted", epoch=1)
    with pytest.raises(PodiumError, match="no validation predictions .* the run has not finished"):
        run_audit(run)
    cv = tmp_path / "cv"
    write_text(cv / "config.yaml", config_to_yaml(cfg))
    write_json(cv / "cv.json", {"k": 2, "classes": ["a", "b"]})
    (cv / "fold0").mkdir()
    with pytest.raises(PodiumError, match=r"no out-of-fold predictions .* fold\(s\) 0, 1 of 2 are not finished"):
        run_audit(cv)
    ensemble = tmp_path / "ens"
    write_json(ensemble / "ensemble.json", {"classes": ["a", "b"], "members": []})
    assert main(["audit", str(ensemble)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "ensemble folder; audit one of its cv runs" in err and "Traceback" not in err


# ---------------------------------------------------------------- the review page in a browser


def _choose(tools, session, ident: str, value: str, nth: int = 0) -> None:
    expression = (f"(() => {{ const s = Array.from(document.querySelectorAll('select.choice'))"
                  f".filter(e => e.dataset.id === {json.dumps(ident)})[{nth}]; s.value = {json.dumps(value)}; "
                  "s.dispatchEvent(new Event('change')); return s.value; })()")
    got = tools.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    assert got["result"].get("value") == value, got


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_review_page_choices_round_trip_into_label_fixes(tmp_path):
    run = _composite(tmp_path)
    old_fixes = tmp_path / "old_fixes.csv"
    old_fixes.write_text("id,attribute,new_value\nimg_077.png,mask,off\nimg_100.png,age,old\n")
    cfg = load_config(run / "config.yaml", [f"task.label_fixes={old_fixes}"])
    write_text(run / "config.yaml", config_to_yaml(cfg))  # the run was trained with earlier fixes
    audit = run_audit(run, features=False, log=lambda *a: None)
    chosen: dict[str, str] = {}

    def decide(tools, session):
        undecided = wait_for(tools, session, "document.getElementById('csv').value")
        assert undecided.splitlines()[1:] == ["img_077.png,mask,off,relabel", "img_100.png,age,old,relabel"]
        _choose(tools, session, "p03", "relabel:" + _suggested(audit, "p03"))  # the person's gender
        chosen["weight"] = _weight_option(tools, session, "img_040.png")
        _choose(tools, session, "img_040.png", chosen["weight"])              # doubtful: counted less
        _choose(tools, session, "p07", "keep")                                # the group's ages checked: right
        _choose(tools, session, "img_077.png", "drop")                        # replaces the earlier mask fix

    downloads = _review_and_export(audit.review_page, tmp_path, decide)
    weight = chosen["weight"]
    exported = pd.read_csv(downloads / "label_fixes.csv", dtype=str, keep_default_na=False)
    assert sorted(exported.values.tolist()) == sorted([
        ["img_100.png", "age", "old", "relabel"], ["p03", "gender", _suggested(audit, "p03"), "relabel"],
        ["img_040.png", "", weight.partition(":")[2], "weight"], ["p07", "age", "", "keep"],
        ["img_077.png", "", "", "drop"]])
    assert float(weight.partition(":")[2]) == pytest.approx(_belief(audit, "img_040.png"), rel=0.05)
    # the next run reads them through task.label_fixes: p03 relabelled, img_077 left out
    from podium.data.samples import load_pool

    data = load_config(None, [f"data.train={tmp_path / 'data.csv'}", "data.group_column=group", "data.id_column=id",
                              f"task.attributes={json.dumps(COMPOSITE)}",
                              f"task.label_fixes={downloads / 'label_fixes.csv'}"])
    table = pd.read_csv(tmp_path / "data.csv").assign(group=pd.read_csv(run / "folds.csv")["group"])
    parts = table.pop("label").str.split("/", expand=True)
    for j, name in enumerate(COMPOSITE):
        table[name] = parts[j]
    table.to_csv(tmp_path / "data.csv", index=False)
    frame, _, _ = load_pool(data, log=lambda *a: None)
    assert "img_077.png" not in set(frame["id"]) and len(frame) == 119
    assert set(frame.loc[frame["group"] == "p03", "gender"]) == {_suggested(audit, "p03")}
    assert frame.set_index("id").loc["img_100.png", "age"] == "old"
    weights = frame.set_index("id")["sample_weight"]
    assert weights["img_040.png"] == float(weight.partition(":")[2]) and (weights.drop("img_040.png") == 1).all()


def _weight_option(tools, session, ident: str, nth: int = 0) -> str:
    """The value of the weight choice of the ``nth`` card of ``ident``."""
    return wait_for(tools, session, f"[...[...document.querySelectorAll('select.choice')].filter(s => s.dataset.id === "
                                    f"{json.dumps(ident)})[{nth}].options].map(o => o.value)"
                                    ".find(v => v.startsWith('weight:'))")


def _review_and_export(page: Path, tmp_path: Path, decide) -> Path:
    """Open the review page in headless Chromium, let ``decide(tools, session)`` make choices, press
    Export; the downloads folder (its label_fixes.csv). No script error may have been thrown."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    tools = DevTools(chromium(), tmp_path / "profile")
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime"):
            tools.send(f"{domain}.enable", session=session)
        tools.send("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads),
                                                   "eventsEnabled": True})
        tools.send("Page.navigate", {"url": page.as_uri()}, session)
        wait_for(tools, session, "document.readyState === 'complete' && !!document.getElementById('export')")
        decide(tools, session)
        tools.send("Runtime.evaluate", {"expression": "document.getElementById('export').click()"}, session)
        deadline = time.monotonic() + 30
        while not (downloads / "label_fixes.csv").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        errors = [e for e in tools.events if e.get("method") == "Runtime.exceptionThrown"]
    finally:
        tools.close()
    assert not errors, errors
    return downloads


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_two_weight_choices_for_one_image_multiply(tmp_path):
    """Attributes judged per image (no groups): an image whose mask and gender are both doubtful has
    two cards; weighting both exports one row, the product, as `--suggest weight` writes it."""
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 2, (60, 3))
    given = truth.copy()
    given[5, :2] = 1 - given[5, :2]  # image 5: mask and gender wrong
    marginals = [_softmax(4.0 * np.eye(2)[truth[:, j]] + rng.normal(0, 0.5, (60, 2))) for j in range(3)]
    from podium.tasks.attributes import AttributeTask, joint_from_marginals

    names = list(COMPOSITE)
    labels = ["/".join(COMPOSITE[n][g[j]] for j, n in enumerate(names)) for g in given]
    run = plant_cv(tmp_path, labels, joint_from_marginals(marginals), AttributeTask(COMPOSITE).composite_names(),
                   extra=[f"task.attributes={json.dumps(COMPOSITE)}"])
    audit = run_audit(run, features=False, method="predicted_neq_given", log=lambda *a: None)  # exactly the flips
    cards = audit.issues[audit.issues["id"] == "img_005.png"]
    assert sorted(cards["attribute"]) == ["gender", "mask"]
    values: list[str] = []

    def decide(tools, session):
        for nth in (0, 1):
            values.append(_weight_option(tools, session, "img_005.png", nth))
            _choose(tools, session, "img_005.png", values[-1], nth)

    downloads = _review_and_export(audit.review_page, tmp_path, decide)
    exported = pd.read_csv(downloads / "label_fixes.csv", dtype=str, keep_default_na=False)
    product = float(values[0].partition(":")[2]) * float(values[1].partition(":")[2])
    assert exported.values.tolist() == [["img_005.png", "", f"{float(f'{product:.2g}'):g}", "weight"]]
    suggested = audit.suggested_fixes(action="weight").set_index("id")["new_value"]
    assert float(suggested["img_005.png"]) == pytest.approx(product, rel=0.1)


def _belief(audit, ident: str) -> float:
    row = audit.issues[audit.issues["id"] == ident].iloc[0]
    return min(1.0, float(row["p_given"]) / float(row["p_suggested"]))


def _suggested(audit, ident: str) -> str:
    rows = audit.issues[audit.issues["id"] == ident]
    return str(rows.iloc[0]["suggested"])


# ---------------------------------------------------------------- a real (tiny) cv run


def test_a_trained_cv_run_flags_its_flips(noisy_cv):
    run, flipped = noisy_cv
    result = run_audit(run, log=lambda *a: None)
    labels = result.issues[result.issues["kind"] == "label"]
    flagged = set(labels["id"])
    precision = len(flagged & flipped) / max(len(flagged), 1)
    rate = len(flipped) / result.summary["n_images"]
    assert precision > 2 * rate and len(flagged & flipped) >= len(flipped) / 2, (labels, flipped)
    single = run_audit(run / "fold0", features=False, log=lambda *a: None)
    assert single.summary["kind"] == "run" and single.summary["note"].startswith("validation part only")
    assert single.summary["n_images"] < result.summary["n_images"]
    assert "This audit saw only the run&#x27;s validation images" in single.review_page.read_text()


def test_suggested_weights_train_a_run_that_counts_flagged_labels_less(noisy_cv, tmp_path):
    """`--suggest weight`: every flagged image kept with weight min(1, p_given / p_suggested); a run
    given that file trains on exactly those per-row weights and says so in its summary."""
    import podium
    from podium.rundir import SOFT_TARGETS_FILE, read_config, read_split, read_table

    cv, flipped = noisy_cv
    out = tmp_path / "audit"
    assert main(["audit", str(cv), "--no-features", "--out", str(out), "--suggest", "weight"]) == 0
    fixes = pd.read_csv(out / "suggested_fixes.csv", dtype={"id": str, "new_value": float})
    issues = pd.read_csv(out / "issues.csv", dtype={"id": str})
    labels = issues[issues["kind"] == "label"].set_index("id")
    assert set(fixes["action"]) == {"weight"} and set(fixes["id"]) == set(labels.index)
    expected = (labels["p_given"] / labels["p_suggested"]).clip(upper=1.0)
    assert np.allclose(fixes.set_index("id")["new_value"], expected.loc[fixes["id"]], atol=1e-4)
    assert fixes.loc[fixes["id"].isin(flipped), "new_value"].max() < 0.5  # the folds doubt the flips
    cfg = read_config(cv)
    run = podium.train(load_config(None, [f"{k}={v}" for k, v in {
        "data.train": cfg.data.train, "model.name": "test_resnet", "model.pretrained": "false",
        "data.image_size": 32, "train.epochs": 1, "train.batch_size": 8, "train.precision": "'32'",
        "data.num_workers": 0, "output.tensorboard": "false", "output.report": "false",
        "output.dir": tmp_path / "runs", "output.name": "weighted", "train.accelerator": "cpu",
        "train.devices": 1, "task.label_fixes": out / "suggested_fixes.csv"}.items()]), log=lambda *a: None)
    split = read_split(run.dir)
    train_ids = set(split.loc[split["split"] == "train", "id"])
    soft = read_table(run.dir / SOFT_TARGETS_FILE, "soft targets").set_index("id")
    weights = fixes.set_index("id")["new_value"]
    weighted = weights[weights.index.isin(train_ids)]
    assert len(weighted) > 0 and np.allclose(soft.loc[weighted.index, "hard"], weighted, atol=1e-4)
    assert (soft.drop(index=weighted.index)["hard"] == 1).all() and (soft["soft"] == 0).all()
    record = run.summary["soft_targets"]["sample_weights"]
    assert record["weighted_rows"] == int((weighted != 1).sum()) and str(out / "suggested_fixes.csv") in record["source"]
    resumed = podium.train(resume=run.dir, epochs=2, log=lambda *a: None)  # the weights come back with the run
    assert resumed.summary["soft_targets"]["sample_weights"] == record
