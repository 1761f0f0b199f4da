"""The ``search:`` section of a tune YAML: parsed into Optuna distributions and checked
against the config schema before any trial starts.

A tune file is a normal podium config plus::

    search:
      train.lr: {low: 1.0e-5, high: 1.0e-2, log: true}    # float (log scale)
      train.epochs: {low: 2, high: 6}                     # int (the schema field is an int)
      train.weight_decay: {low: 0, high: 0.001}          # float: the field is a float
      model.name: [resnet18, efficientnet_b0]            # categorical
      augment.preset: {choices: [light, default]}        # categorical, spelled out

Keys are dotted config keys (nested mappings are flattened). Every key, both
bounds and every choice are validated with the real schema, so a typo or a
value `podium train` would reject fails here, naming the key, not in trial 7.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import Any

from podium.errors import PodiumError, closest
from podium.schema import PodiumConfig, deep_merge, format_validation_error

SEARCH_KEY = "search"
RANGE_KEYS = {"low", "high", "log", "step", "type", "choices"}
#: keys `podium tune` sets itself for every trial
RESERVED = {"output.dir": "the study folder", "output.name": "trial_<n>"}


@dataclass(frozen=True)
class SearchParam:
    """One searched config key: a float/int range or a list of categorical choices."""

    key: str
    kind: str  # "float" | "int" | "categorical"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = field(default_factory=tuple)

    def bounds(self) -> tuple[float | int, float | int]:
        """``(low, high)`` of a range (parsing sets both for every int/float range)."""
        if self.low is None or self.high is None:
            raise PodiumError(f"search.{self.key}: a {self.kind} range needs low and high")
        return self.low, self.high

    def suggest(self, trial) -> Any:
        """The value Optuna picks for this key in ``trial`` (fixed params of a retried trial included)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        low, high = self.bounds()
        if self.kind == "int":
            return trial.suggest_int(self.key, int(low), int(high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(low), float(high), step=self.step, log=self.log)

    def grid_values(self) -> list:
        """The values a grid search visits: the choices, or every step of an int range."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            low, high = self.bounds()
            return list(range(int(low), int(high) + 1, int(self.step or 1)))
        raise PodiumError(
            f"search.{self.key}: the grid sampler needs a list of values, found a {self.kind} range "
            f"{{low: {self.low}, high: {self.high}{', log: true' if self.log else ''}}}; write the values as a "
            f"list (e.g. {self.key}: [{self.low}, {self.high}]) or use --sampler tpe")


def split_search(raw: dict) -> tuple[dict, dict]:
    """A tune YAML -> (the config without ``search``, the search section)."""
    base = {k: v for k, v in raw.items() if k != SEARCH_KEY}
    search = raw.get(SEARCH_KEY)
    if search is None:
        raise PodiumError("the tune config has no `search:` section; add one, e.g.\n"
                          "search:\n  train.lr: {low: 1.0e-4, high: 1.0e-1, log: true}\n  augment.preset: [light, default]")
    if not isinstance(search, dict) or not search:
        raise PodiumError(f"`search:` must be a non-empty mapping of config keys to ranges or choice lists, "
                          f"found {search!r}")
    return base, search


def parse_search(search: dict, base: dict) -> list[SearchParam]:
    """Validated search parameters; ``base`` is the config the trials start from (raw dict)."""
    params = []
    for key, spec in flatten_search(search).items():
        annotation = field_annotation(key)
        param = _parse_one(key, spec, annotation)
        _check_against_schema(param, base)
        params.append(param)
    return params


def flatten_search(search: dict, prefix: str = "") -> dict:
    """``{train: {lr: {...}}}`` and ``{train.lr: {...}}`` both become ``{"train.lr": {...}}``."""
    flat: dict = {}
    for key, spec in search.items():
        dotted = f"{prefix}{key}"
        if isinstance(spec, dict) and spec and not (set(spec) & RANGE_KEYS):
            flat.update(flatten_search(spec, dotted + "."))
        else:
            flat[dotted] = spec
    return flat


def field_annotation(key: str):
    """The schema type of dotted ``key``; unknown keys fail with the allowed ones and a close match."""
    if key in RESERVED:
        raise PodiumError(f"search.{key}: this key cannot be searched; podium tune sets it to {RESERVED[key]} "
                          "for every trial. Remove it from `search:`")
    model: Any = PodiumConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            raise PodiumError(f"search.{key}: {'.'.join(parts[:depth])} is a value, not a section; "
                              "search a key such as train.lr")
        if part not in fields:
            where = ".".join(parts[:depth])
            hint = closest(part, fields)
            msg = f"search.{key}: unknown config key {part!r}{' in ' + where if where else ''}; allowed: {', '.join(sorted(fields))}"
            if hint:
                msg += f". Did you mean {'.'.join(parts[:depth] + [hint[0]])!r}?"
            raise PodiumError(msg)
        model = fields[part].annotation
    if isinstance(model, type) and hasattr(model, "model_fields"):
        raise PodiumError(f"search.{key} is a whole section; search one of its keys instead: "
                          f"{', '.join(f'{key}.{k}' for k in sorted(model.model_fields))}")
    return model


def _numeric_kind(annotation) -> str | None:
    """'int' or 'float' when the schema field is (optionally) that number type."""
    args = typing.get_args(annotation) or (annotation,)
    kinds = {a for a in args if a in (int, float)}
    if kinds == {int}:
        return "int"
    if float in kinds:
        return "float"
    return None


def _number(key: str, name: str, value) -> float | int:
    """A bound as a number; YAML reads ``1e-5`` (no dot) as a string, so numeric strings are accepted."""
    if isinstance(value, bool):
        raise PodiumError(f"search.{key}: {name} must be a number, found {value!r}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise PodiumError(f"search.{key}: {name} must be a number, found {value!r}")


def _parse_one(key: str, spec, annotation) -> SearchParam:
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, dict):
        raise PodiumError(f"search.{key}: expected a range {{low: ..., high: ...}} or a list of choices, found {spec!r}. "
                          f"Write e.g. {key}: {{low: 1, high: 5}} or {key}: [a, b]")
    unknown = set(spec) - RANGE_KEYS
    if unknown:
        bad = sorted(unknown)[0]
        hint = closest(bad, RANGE_KEYS)
        raise PodiumError(f"search.{key}: unknown range field {bad!r}; allowed: {', '.join(sorted(RANGE_KEYS))}"
                          + (f". Did you mean {hint[0]!r}?" if hint else ""))
    if "choices" in spec:
        return _parse_choices(key, spec)
    if "low" not in spec or "high" not in spec:
        raise PodiumError(f"search.{key}: a range needs both low and high, found {spec!r}")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    if low > high:
        raise PodiumError(f"search.{key}: low ({low}) is greater than high ({high}); swap them")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise PodiumError(f"search.{key}: log must be true or false, found {log!r}")
    if log and low <= 0:
        raise PodiumError(f"search.{key}: a log range needs low > 0, found low={low}; use a positive low or log: false")
    step = _number(key, "step", spec["step"]) if spec.get("step") is not None else None
    if step is not None and (step <= 0 or log):
        raise PodiumError(f"search.{key}: step must be > 0 and cannot be combined with log: true, found step={step}")
    kind = spec.get("type") or _numeric_kind(annotation)
    if kind is None:
        kind = "int" if all(isinstance(v, int) for v in (low, high)) else "float"
    if kind not in ("int", "float"):
        raise PodiumError(f"search.{key}: type must be int or float for a range, found {kind!r}")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high) + ((step,) if step else ())):
        raise PodiumError(f"search.{key} is a whole-number key: low, high and step must be whole numbers, "
                          f"found low={low}, high={high}" + (f", step={step}" if step else ""))
    if kind == "int":
        low, high, step = int(low), int(high), (int(step) if step else None)
    else:
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise PodiumError(f"search.{key}: low and high must be finite, found {low}, {high}")
    return SearchParam(key, kind, low, high, log, step)


def _parse_choices(key: str, spec: dict) -> SearchParam:
    choices = spec["choices"]
    extra = set(spec) - {"choices", "type"}
    if extra:
        raise PodiumError(f"search.{key}: a choice list takes no {', '.join(sorted(extra))}; give either "
                          "choices or low/high")
    if not isinstance(choices, list) or not choices:
        raise PodiumError(f"search.{key}: the choice list is empty (found {choices!r}); list at least one value, "
                          f"e.g. {key}: [a, b]")
    for choice in choices:
        if not (choice is None or isinstance(choice, (bool, int, float, str))):
            raise PodiumError(f"search.{key}: choice {choice!r} is a {type(choice).__name__}; Optuna choices must be "
                              "single values (numbers, strings, true/false, null)")
    if len(set(map(repr, choices))) != len(choices):
        raise PodiumError(f"search.{key}: the choice list {choices!r} repeats a value; list each once")
    return SearchParam(key, "categorical", choices=tuple(choices))


def nested(key: str, value) -> dict:
    """``("train.lr", 0.1)`` -> ``{"train": {"lr": 0.1}}``."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def apply_values(base: dict, values: dict) -> dict:
    """The raw config of one trial: ``base`` with each searched key set."""
    raw = dict(base)
    for key, value in values.items():
        raw = deep_merge(raw, nested(key, value))
    return raw


def _check_against_schema(param: SearchParam, base: dict) -> None:
    """Validate the config with each bound / choice in place, as `podium train` would."""
    from pydantic import ValidationError

    if param.kind == "categorical":
        probes = list(param.choices)
        names = [f"choice {c!r}" for c in param.choices]
    else:
        probes = [param.low, param.high]
        names = [f"low {param.low!r}", f"high {param.high!r}"]
    for value, name in zip(probes, names):
        try:
            PodiumConfig.model_validate(apply_values(base, {param.key: value}))
        except ValidationError as exc:
            detail = format_validation_error(exc).splitlines()[1:-1]
            raise PodiumError(f"search.{param.key}: {name} is rejected by the config schema:\n"
                              + "\n".join(detail) + f"\nFix the range or choices of search.{param.key}") from None
