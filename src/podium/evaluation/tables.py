"""The one prediction table: what every command writes and every ensemble reads.

Schema: ``id`` first, then optional ``path``, ``target`` (true label),
``prediction`` (argmax class), ``group``, ``fold``, then one float column per
class in class-map order. Validation predictions, evaluations, OOF tables,
test probabilities and ensembles all use it, so any of them can be an
ensemble member.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from podium.fileio import write_parquet

#: non-probability columns, in the order they appear
METADATA_COLUMNS = ("id", "path", "target", "prediction", "label", "group", "fold")


def prediction_table(ids: Sequence, probs: np.ndarray, classes: Sequence[str], *, paths: Sequence | None = None,
                     targets: Sequence | None = None, prediction: bool | None = None,
                     extra: dict[str, Sequence] | None = None) -> pd.DataFrame:
    """``id`` [+ path, target, prediction, extra columns] + one probability column per class.

    ``prediction`` (the argmax class name) is included whenever targets are,
    unless asked otherwise, so labelled tables can be read without the class map.
    """
    probs = np.asarray(probs)
    columns: dict[str, np.ndarray] = {"id": np.asarray(ids)}
    if paths is not None:
        columns["path"] = np.asarray(paths)
    if targets is not None:
        columns["target"] = np.asarray(targets)
    if prediction if prediction is not None else targets is not None:
        columns["prediction"] = np.asarray(classes, dtype=object)[probs.argmax(1)] if len(probs) else np.array([], dtype=object)
    for name, values in (extra or {}).items():
        columns[name] = np.asarray(values)
    meta = pd.DataFrame(columns)
    return pd.concat([meta, pd.DataFrame(probs, columns=list(classes))], axis=1)


def probability_columns(frame: pd.DataFrame) -> list[str]:
    """The class columns of a prediction table (everything that is not metadata)."""
    return [str(c) for c in frame.columns if str(c) not in METADATA_COLUMNS]


def save_probabilities(frame: pd.DataFrame, path: str | Path) -> Path:
    return write_parquet(path, frame)
