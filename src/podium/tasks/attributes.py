"""Classes composed of attributes, such as mask x gender x age.

A composite task scores one class per image (18 for the mask competition), but
each class is the product of a few attributes that are labelled, fixed and
sometimes predicted separately. `AttributeTask` is the single place that knows
how attribute indices map to the composite index, so per-attribute heads,
label fixes and the submission all agree on it.

The composite index is mixed radix with the first attribute most significant:
for mask (3) x gender (2) x age (3), ``code = mask * 6 + gender * 3 + age``,
which is exactly the competition's numbering.

DataFrame convention used by `AttributeTask.attribute_indices`,
`AttributeTask.with_labels` and the label fixes (`podium.tasks.fixes`):

- a plain attribute ``a`` has a column ``a`` holding its class name
  (integer columns are read as class indices);
- a binned attribute ``a`` (declared in ``bins``, e.g. age) has a numeric column
  ``a`` (years) and a column ``a_bin`` holding the class index; ``a_bin`` wins
  when present so a fix that names a class (``old``) is not undone by the number;
- ``label`` is the composite class name and ``label_index`` its index.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from podium.errors import PodiumError, closest, summarize_list

SEPARATOR = "/"
DEFAULT_AGE_THRESHOLDS = (30, 60)
DEFAULT_AMBIGUOUS_AGE_BANDS = ((28, 29), (57, 59))


# ---------------------------------------------------------------- the mixed-radix codec
# The one implementation of composite <-> attribute indices and of joint probabilities:
# `AttributeTask`, the multi-head loss (model.engine) and per-attribute voting (ensembles) use it.


def place_values(radices: Sequence[int]) -> np.ndarray:
    """Place value of each digit (first attribute most significant): product of the radices to its right."""
    return np.array([math.prod(radices[i + 1:]) for i in range(len(radices))], dtype=np.int64)


def encode_digits(digits: Sequence[Any], radices: Sequence[int]) -> np.ndarray:
    """Composite indices of per-attribute index arrays: ``sum(digit * place)``."""
    return np.ravel_multi_index(tuple(np.asarray(d, dtype=np.int64) for d in digits), tuple(radices)).astype(np.int64)


def decode_digits(codes: Any, radices: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Inverse of `encode_digits`: per-attribute index arrays of composite indices."""
    return tuple(d.astype(np.int64) for d in np.unravel_index(np.asarray(codes), tuple(radices)))


def joint_from_marginals(arrays: Sequence[Any]) -> np.ndarray:
    """(N, K1), (N, K2), ... -> (N, K1*K2*...) product probabilities in mixed-radix order."""
    joint = None
    for p in arrays:
        p = np.asarray(p, dtype=np.float64)
        joint = p if joint is None else (joint[:, :, None] * p[:, None, :]).reshape(len(p), -1)
    if joint is None:
        raise ValueError("joint_from_marginals needs at least one attribute's probabilities")
    return joint


def _check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    edges = np.asarray(list(thresholds), dtype=float)
    if edges.ndim != 1 or edges.size == 0 or np.isnan(edges).any() or np.any(np.diff(edges) <= 0):
        raise PodiumError(
            f"bin thresholds must be a non-empty, strictly increasing list of numbers; "
            f"got {list(thresholds)}. Example: [30, 60] gives <30, 30-59, >=60"
        )
    return edges


def bin_values(values: Any, thresholds: Sequence[float]) -> Any:
    """Index of the bin each value falls in; a value equal to a threshold goes up.

    Returns an int for a scalar and an int64 array otherwise.
    """
    edges = _check_thresholds(thresholds)
    arr = np.asarray(values, dtype=float)
    if np.isnan(arr).any():
        raise PodiumError(f"cannot bin missing values (NaN) with thresholds {list(thresholds)}")
    out = np.searchsorted(edges, arr, side="right").astype(np.int64)
    return int(out) if out.ndim == 0 else out


def age_bin(age: Any, thresholds: Sequence[float] = DEFAULT_AGE_THRESHOLDS) -> Any:
    """0 = young (< 30), 1 = middle (30-59), 2 = old (>= 60) with the default thresholds."""
    return bin_values(age, thresholds)


@dataclass(frozen=True, eq=True)
class AttributeTask:
    """Ordered attributes, each with ordered class names; see the module docstring.

    ``bins`` names attributes derived from a number (``{"age": (30, 60)}``): they
    need exactly ``len(classes) - 1`` thresholds.
    """

    attributes: Mapping[str, Sequence[str]]
    bins: Mapping[str, Sequence[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        attrs = {str(k): tuple(str(c) for c in v) for k, v in dict(self.attributes).items()}
        if not attrs:
            raise PodiumError("an attribute task needs at least one attribute")
        for name, classes in attrs.items():
            if len(classes) < 2:
                raise PodiumError(f"attribute {name!r} needs at least 2 classes, got {list(classes)}")
            if len(set(classes)) != len(classes):
                raise PodiumError(f"attribute {name!r} has duplicated class names: {list(classes)}")
            bad = [c for c in classes if SEPARATOR in c or not c]
            if bad:
                raise PodiumError(
                    f"class names of {name!r} must be non-empty and contain no {SEPARATOR!r}; got {bad}"
                )
        bins = {str(k): tuple(float(t) for t in v) for k, v in dict(self.bins).items()}
        for name, thresholds in bins.items():
            if name not in attrs:
                raise PodiumError(f"bins given for {name!r}, which is not an attribute: {list(attrs)}")
            _check_thresholds(thresholds)
            if len(thresholds) != len(attrs[name]) - 1:
                raise PodiumError(
                    f"attribute {name!r} has {len(attrs[name])} classes, so it needs "
                    f"{len(attrs[name]) - 1} thresholds; got {list(thresholds)}"
                )
        object.__setattr__(self, "attributes", attrs)
        object.__setattr__(self, "bins", bins)

    def __hash__(self) -> int:
        return hash((tuple(self.attributes.items()), tuple(self.bins.items())))

    # ----------------------------------------------------------- structure
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.attributes)

    @property
    def radices(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.attributes.values())

    @property
    def n_classes(self) -> int:
        return math.prod(self.radices)

    def classes(self, name: str) -> tuple[str, ...]:
        return tuple(self.attributes[self._check_name(name)])

    def bin_column(self, name: str) -> str:
        """Column holding the class index of a binned attribute."""
        return f"{name}_bin"

    def _check_name(self, name: str) -> str:
        if name not in self.attributes:
            hint = closest(name, self.attributes)
            msg = f"unknown attribute {name!r}; allowed: {', '.join(self.attributes)}"
            raise PodiumError(msg + (f". Did you mean {hint[0]!r}?" if hint else ""))
        return name

    def _weights(self) -> np.ndarray:
        return place_values(self.radices)

    # ----------------------------------------------------- single values
    def index_of(self, name: str, value: Any) -> int:
        """Class index of ``value`` (a class name or an index) for attribute ``name``."""
        classes = self.classes(name)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < len(classes):
                raise PodiumError(
                    f"{name} index {int(value)} out of range 0..{len(classes) - 1} ({', '.join(classes)})"
                )
            return int(value)
        if value in classes:
            return classes.index(value)
        hint = closest(str(value), classes)
        msg = f"unknown {name} value {value!r}; allowed: {', '.join(classes)}"
        raise PodiumError(msg + (f". Did you mean {hint[0]!r}?" if hint else ""))

    def encode(self, values: Mapping[str, Any]) -> int:
        """Composite index of one sample from ``{attribute: class name or index}``."""
        self._check_complete(values)
        digits = [self.index_of(n, values[n]) for n in self.names]
        return int(np.dot(digits, self._weights()))

    def decode(self, code: int) -> dict[str, int]:
        """``{attribute: class index}`` of one composite index."""
        code = self._check_code(code)
        return {n: int(d) for n, d in zip(self.names, decode_digits(code, self.radices))}

    def attribute_of(self, code: Any, name: str) -> Any:
        """Class index of attribute ``name`` within composite ``code`` (int or array)."""
        i = self.names.index(self._check_name(name))
        codes = self._check_codes(code)
        out = (codes // self._weights()[i]) % self.radices[i]
        return int(out) if np.ndim(out) == 0 else out

    def composite_name(self, code: int) -> str:
        digits = self.decode(code)
        return SEPARATOR.join(self.attributes[n][digits[n]] for n in self.names)

    def composite_names(self) -> list[str]:
        """Class names in composite-index order, e.g. ``wear/male/young`` first."""
        return [SEPARATOR.join(p) for p in itertools.product(*self.attributes.values())]

    def code_of(self, composite_name: str) -> int:
        """Composite index of a name such as ``wear/female/middle``."""
        parts = str(composite_name).split(SEPARATOR)
        if len(parts) != len(self.names):
            raise PodiumError(
                f"composite class {composite_name!r} must have {len(self.names)} parts "
                f"({SEPARATOR.join(self.names)}), e.g. {self.composite_names()[0]!r}"
            )
        return self.encode(dict(zip(self.names, parts)))

    # ------------------------------------------------------------ arrays
    def encode_array(self, values: Mapping[str, Any]) -> np.ndarray:
        """Vectorised `encode`: ``{attribute: array of class names or indices}`` -> int64 codes."""
        self._check_complete(values)
        digits = [self._index_array(n, values[n]) for n in self.names]
        lengths = {len(d) for d in digits}
        if len(lengths) > 1:
            raise PodiumError(f"attribute arrays differ in length: {[len(d) for d in digits]}")
        return (np.stack(digits, axis=1) @ self._weights()).astype(np.int64)

    def decode_array(self, codes: Any) -> dict[str, np.ndarray]:
        """Vectorised `decode`: int codes -> ``{attribute: int64 index array}``."""
        codes = self._check_codes(codes)
        return dict(zip(self.names, decode_digits(np.atleast_1d(codes), self.radices)))

    def _index_array(self, name: str, values: Any) -> np.ndarray:
        classes = self.classes(name)
        arr = np.asarray(values)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.size and np.issubdtype(arr.dtype, np.integer):
            bad = np.unique(arr[(arr < 0) | (arr >= len(classes))])
            if bad.size:
                raise PodiumError(
                    f"{name} indices out of range 0..{len(classes) - 1}: {summarize_list(bad.tolist())}"
                )
            return arr.astype(np.int64)
        lookup = {c: i for i, c in enumerate(classes)}
        out = np.empty(arr.shape[0], dtype=np.int64)
        unknown = []
        for i, v in enumerate(arr.tolist()):
            if v in lookup:
                out[i] = lookup[v]
            else:
                unknown.append(v)
        if unknown:
            raise PodiumError(
                f"unknown {name} values: {summarize_list(sorted(set(map(str, unknown))))}; "
                f"allowed: {', '.join(classes)}"
            )
        return out

    def _check_complete(self, values: Mapping[str, Any]) -> None:
        missing = [n for n in self.names if n not in values]
        extra = [n for n in values if n not in self.attributes]
        if missing or extra:
            raise PodiumError(
                f"attribute values must name exactly {', '.join(self.names)}; "
                f"missing: {missing or 'none'}, unknown: {extra or 'none'}"
            )

    def _check_code(self, code: Any) -> int:
        if not isinstance(code, (int, np.integer)) or isinstance(code, bool):
            raise PodiumError(f"composite class index must be an integer, got {code!r}")
        return int(self._check_codes(code))

    def _check_codes(self, codes: Any) -> Any:
        arr = np.asarray(codes)
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise PodiumError(f"composite class indices must be integers, got dtype {arr.dtype}")
        bad = arr[(arr < 0) | (arr >= self.n_classes)]
        if bad.size:
            raise PodiumError(
                f"composite class index out of range 0..{self.n_classes - 1}: "
                f"{summarize_list(np.unique(bad).tolist())}"
            )
        return arr.astype(np.int64)

    # ------------------------------------------------------ probabilities
    def marginal_probs(self, probs: Any, name: str) -> np.ndarray:
        """(N, n_classes) composite probabilities -> (N, k) probabilities of one attribute.

        Lets a composite model be scored per attribute (where are the errors:
        mask, gender or age?) without retraining.
        """
        i = self.names.index(self._check_name(name))
        p = np.asarray(probs, dtype=float)
        if p.ndim != 2 or p.shape[1] != self.n_classes:
            raise PodiumError(f"expected probabilities of shape (N, {self.n_classes}), got {p.shape}")
        cube = p.reshape((p.shape[0], *self.radices))
        other = tuple(ax + 1 for ax in range(len(self.radices)) if ax != i)
        return cube.sum(axis=other)

    def joint_probs(self, attribute_probs: Mapping[str, Any]) -> np.ndarray:
        """Per-attribute probabilities -> (N, n_classes) composite ones, assuming independence.

        This is how a multi-head model (one softmax per attribute) produces the
        composite prediction: argmax of the product is the argmax of each head.
        """
        self._check_complete(attribute_probs)
        for name, k in zip(self.names, self.radices):
            p = np.asarray(attribute_probs[name])
            if p.ndim != 2 or p.shape[1] != k:
                raise PodiumError(f"{name} probabilities must have shape (N, {k}), got {p.shape}")
        return joint_from_marginals([attribute_probs[name] for name in self.names])

    # -------------------------------------------------------- DataFrames
    def attribute_indices(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """``{attribute: int64 index array}`` read from ``df`` by the module's column convention."""
        out = {}
        for name in self.names:
            if name in self.bins and self.bin_column(name) in df:
                out[name] = self._index_array(name, df[self.bin_column(name)].to_numpy(dtype=np.int64))
            elif name in self.bins and name in df:
                out[name] = np.atleast_1d(bin_values(df[name].to_numpy(dtype=float), self.bins[name]))
            elif name in df:
                col = df[name]
                values = col.to_numpy(dtype=np.int64) if pd.api.types.is_integer_dtype(col) else col.to_numpy(dtype=object)
                out[name] = self._index_array(name, values)
            else:
                raise PodiumError(
                    f"samples table has no column for attribute {name!r}; columns: {', '.join(map(str, df.columns))}"
                )
        return out

    def with_labels(self, df: pd.DataFrame) -> pd.DataFrame:
        """Copy of ``df`` with ``label`` (composite name) and ``label_index`` recomputed."""
        out = df.copy()
        codes = self.encode_array(self.attribute_indices(out)) if len(out) else np.zeros(0, np.int64)
        names = self.composite_names()
        out["label_index"] = codes.astype(np.int64)
        out["label"] = [names[c] for c in codes]
        return out


def mask_task(age_thresholds: Sequence[float] = DEFAULT_AGE_THRESHOLDS) -> AttributeTask:
    """The mask competition: mask (3) x gender (2) x age (3) = 18 classes."""
    return AttributeTask(
        {"mask": ("wear", "incorrect", "not_wear"), "gender": ("male", "female"), "age": ("young", "middle", "old")},
        bins={"age": tuple(age_thresholds)},
    )


MASK_TASK = mask_task()


# --------------------------------------------------------------- ambiguous ages
def _check_bands(bands: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    out = []
    for band in bands:
        if len(band) != 2 or float(band[0]) > float(band[1]):
            raise PodiumError(f"age bands must be [low, high] pairs with low <= high; got {list(band)}")
        out.append((float(band[0]), float(band[1])))
    return out


def ambiguous_age_mask(
    ages: Any, bands: Sequence[Sequence[float]] = DEFAULT_AMBIGUOUS_AGE_BANDS
) -> np.ndarray:
    """True where an age lies in one of the inclusive ``bands``.

    Ages just below a threshold are where the annotated age is least reliable
    relative to the class boundary (a 59-year-old looks like the 60+ class),
    so dropping them from training sharpens what the model learns. Apply it to
    training rows only: validation must keep the test distribution.
    """
    arr = np.atleast_1d(np.asarray(ages, dtype=float))
    mask = np.zeros(arr.shape, dtype=bool)
    for lo, hi in _check_bands(bands):
        mask |= (arr >= lo) & (arr <= hi)
    return mask


def drop_ambiguous_ages(
    train_df: pd.DataFrame,
    bands: Sequence[Sequence[float]] = DEFAULT_AMBIGUOUS_AGE_BANDS,
    column: str = "age",
) -> tuple[pd.DataFrame, int]:
    """Training rows without ambiguous ages, and how many were dropped (see `ambiguous_age_mask`)."""
    if column not in train_df:
        columns = ", ".join(map(str, train_df.columns))
        raise PodiumError(f"cannot drop ambiguous ages: no {column!r} column; columns: {columns}")
    drop = ambiguous_age_mask(train_df[column].to_numpy(dtype=float), bands)
    return train_df.loc[~drop].reset_index(drop=True), int(drop.sum())
