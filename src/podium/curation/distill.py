"""`podium distill`: a student trained on a teacher's soft probabilities, as a normal run.

The student is configured like its teacher (the same data, task, image size and
recipe; a cv run's config, or an ensemble's reading config), with its own model, and
the ``distill.*`` keys that make `podium train` learn from the teacher
(`podium.model.soft_targets`). So the result is an ordinary run folder: predict,
export (with its parity check) and serve work on it as on any run, and
``podium train cfg.yaml distill.teacher=runs/cv`` trains the same student.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from podium.errors import PodiumError
from podium.schema import (
    PodiumConfig,
    deep_merge,
    parse_overrides,
    read_yaml,
    validate_config,
)


def distill_config(teacher: str | Path, *, model: str | None = None, config: str | Path | None = None,
                   overrides: Sequence[str] = (), unlabeled: str | Path | None = None,
                   temperature: float | None = None, alpha: float | None = None) -> PodiumConfig:
    """The student's config: the teacher's, its model replaced by ``model``, then ``config`` (a YAML
    file) and ``overrides``, then the distillation keys."""
    from podium.model.soft_targets import teacher_kind

    teacher = Path(teacher)
    base = teacher_config(teacher, teacher_kind(teacher)).model_dump(mode="json")
    base["data"]["pseudo_labels"] = None  # the teacher's own training extras are not the student's
    base["distill"] = {}
    if model is not None and model != base["model"]["name"]:
        base["model"].update(name=model, pretrained_path=None)  # the teacher's weights file fits the teacher only
    base["output"]["name"] = f"{teacher.name}-distilled"
    raw = deep_merge(base, read_yaml(config)) if config is not None else base
    raw = deep_merge(raw, parse_overrides(list(overrides)))
    distill: dict[str, str | float] = {"teacher": str(teacher)}
    distill.update({k: v for k, v in (("unlabeled", None if unlabeled is None else str(unlabeled)),
                                      ("temperature", temperature), ("alpha", alpha)) if v is not None})
    raw["distill"] = deep_merge(raw.get("distill") or {}, distill)
    return validate_config(raw)


def teacher_config(teacher: Path, kind: str) -> PodiumConfig:
    """How the teacher read and learnt its data: a cv run's config, an ensemble's reading config."""
    from podium.rundir import read_config

    if kind == "cv":
        return read_config(teacher)
    from podium.inference.predictor import load_predictor

    predictor = load_predictor(teacher)
    if predictor.config is None:
        raise PodiumError(f"the ensemble {teacher} records no config of its members; distil from one of its cv runs")
    return predictor.config


def distill(teacher: str | Path, *, model: str | None = None, config: str | Path | None = None,
            overrides: Sequence[str] = (), unlabeled: str | Path | None = None, temperature: float | None = None,
            alpha: float | None = None, progress: bool = False, log=print):
    """Train the student (`distill_config`) and return its `TrainResult`."""
    from podium.model.training import train

    cfg = distill_config(teacher, model=model, config=config, overrides=overrides, unlabeled=unlabeled,
                         temperature=temperature, alpha=alpha)
    log(f"distilling {teacher} into {cfg.model.name} (temperature {cfg.distill.temperature}, alpha {cfg.distill.alpha})")
    return train(cfg, progress=progress, log=log)
