"""Search spaces as data: parameter name (a TrialConfig flat key) -> distribution.

Built-ins: ``admm``, ``baseline``, ``compare``, ``seed``; or a user's YAML/TOML file. Everything is validated
here, before Ray starts: unknown parameter (not a TrialConfig field), empty range, low > high, a log range
touching zero, a bad type, fixed values rejected by ``TrialConfig.from_dict``. Nothing here computes anything
at search time: :func:`suggest` only maps an Optuna trial to a flat dict.

User file format (TOML shown; YAML has the same keys)::

    name = "mine"
    methods = ["admm"]               # admm and/or magnitude
    [params]
    lr = {type = "float", low = 1e-4, high = 1e-2, log = true}
    admm_interval = {type = "categorical", choices = [0.25, 0.5]}   # epochs between Z/U updates
    sparsity_set = {type = "categorical", choices = ["uniform", "global"]}
    sparsity = 0.5                   # a plain value: fixed
    [method_params.admm]             # only for trials of that method
    rho = {type = "float", low = 1e-4, high = 1.0, log = true}
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

from vocabulary.config import ARCHS, METHODS, ConfigError, TrialConfig, field_owners

__all__ = ["Space", "Dist", "SpaceError", "BUILTIN", "SPARSITY_LEVELS", "KINDS", "load_space", "read_space_file",
           "parse_space", "parse_params", "parse_dist", "validate_space", "check_range", "sample_values",
           "check_value", "suggest", "describe_spaces"]

KINDS = ("float", "int", "categorical", "fixed")


class SpaceError(ValueError):
    """A search space is invalid. ``field`` names the parameter (or file key) at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Dist:
    """One parameter's distribution. ``log`` only for float/int; ``choices`` only for categorical."""

    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    value: Any = None  # kind == "fixed"

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed {self.value!r}"
        if self.kind == "categorical":
            return "one of " + ", ".join(map(repr, self.choices))
        return f"{self.kind}{' log' if self.log else ''} [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Space:
    """A named space. ``grid`` spaces (``seed``) are not searched: one trial per (arch, method, seed)."""

    name: str
    description: str
    methods: tuple[str, ...]
    params: Mapping[str, Dist] = field(default_factory=dict)
    method_params: Mapping[str, Mapping[str, Dist]] = field(default_factory=dict)
    grid: bool = False
    archs: tuple[str, ...] | None = None  # the archs a grid space forces; None: --arch decides

    def params_for(self, method: str) -> dict[str, Dist]:
        return {**self.params, **self.method_params.get(method, {})}

    def searches_sparsity(self, method: str) -> bool:
        d = self.params_for(method).get("sparsity")
        return d is not None and d.kind != "fixed"


def _f(low: float, high: float, log: bool = False) -> Dist:
    return Dist("float", low, high, log)


# Sparsity is searched over shared levels, not a continuous range: methods (and sweeps) can then be compared
# at matched sparsities, with seeds paired, which a continuous draw never gives. 0.5 is the original study's.
SPARSITY_LEVELS = Dist("categorical", choices=(0.5, 0.7, 0.9))


BUILTIN: dict[str, Space] = {
    "admm": Space(
        "admm", "ADMM: rho, lr, sparsity, rho growth, update interval", ("admm",),
        {"lr": _f(1e-4, 1e-2, True), "sparsity": SPARSITY_LEVELS},
        {"admm": {"rho": _f(1e-4, 1.0, True), "rho_growth": _f(1.0, 1.5),
                  # in epochs, relative to the data's size: 8 or 4 Z/U updates per epoch, so even a 1-epoch
                  # sparsify phase of a few steps makes several updates that act on W (DESIGN rule 12; every
                  # choice is checked against the phase length before the sweep starts)
                  "admm_interval": Dist("categorical", choices=(0.125, 0.25)),
                  "admm_interval_unit": Dist("fixed", value="epoch"),
                  # rho_max must stay >= rho whatever rho is drawn; growth is capped here
                  "rho_max": Dist("fixed", value=10.0)}},
    ),
    "baseline": Space(
        "baseline", "magnitude pruning: lr, sparsity, schedule", ("magnitude",),
        {"lr": _f(1e-4, 1e-2, True), "sparsity": SPARSITY_LEVELS,
         "schedule": Dist("categorical", choices=("per_step", "one_shot", "gradual"))},
    ),
    "compare": Space(
        "compare", "both methods, the same trials and epochs each: lr, sparsity (+ rho for admm)",
        ("admm", "magnitude"),
        {"lr": _f(1e-4, 1e-2, True), "sparsity": SPARSITY_LEVELS},
        {"admm": {"rho": _f(1e-4, 1.0, True), "rho_max": Dist("fixed", value=10.0)}},
    ),
    "seed": Space(
        "seed", "the original setting, no search: 3 archs x both methods x --seeds seeds",
        ("admm", "magnitude"),
        {"sparsity_set": Dist("fixed", value="uniform"), "sparsity": Dist("fixed", value=0.5),
         "optimizer": Dist("fixed", value="adam"), "lr": Dist("fixed", value=1e-3)},
        {"admm": {"rho": Dist("fixed", value=0.01)}},
        grid=True, archs=ARCHS,
    ),
}


def load_space(name_or_path: str) -> Space:
    """A built-in space by name, or a YAML/TOML file; validated. Raises SpaceError (field "space" or the
    parameter name)."""
    if name_or_path in BUILTIN:
        space = BUILTIN[name_or_path]
    elif name_or_path.endswith((".toml", ".yaml", ".yml")):
        space = parse_space(read_space_file(name_or_path), source=name_or_path)
    else:
        raise SpaceError("space", f"{name_or_path!r} is not one of {', '.join(BUILTIN)} "
                                  "nor a .toml/.yaml/.yml space file")
    validate_space(space)
    return space


def read_space_file(path: str) -> dict:
    """Parse a YAML or TOML file into a dict; raises SpaceError("space", ...) when unreadable or malformed."""
    if not os.path.isfile(path):
        raise SpaceError("space", f"space file {path} does not exist")
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            import yaml  # optional dependency of the space-file feature only

            with open(path) as f:
                data = yaml.safe_load(f)
    except Exception as e:  # noqa: BLE001 - any parser error is the user's file: report it as such
        raise SpaceError("space", f"space file {path} is malformed: {e}") from None
    if not isinstance(data, dict):
        raise SpaceError("space", f"space file {path} must be a mapping with keys name, methods, params")
    return data


def parse_space(data: Mapping[str, Any], *, source: str) -> Space:
    """Turn a file's mapping into a Space (types checked; ranges checked by validate_space)."""
    unknown = sorted(set(data) - {"name", "description", "methods", "params", "method_params"})
    if unknown:
        raise SpaceError(unknown[0], f"unknown key in {source} (allowed: name, description, methods, params, "
                                     "method_params)")
    methods = data.get("methods", list(METHODS))
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, list) or not methods or any(m not in METHODS for m in methods):
        raise SpaceError("methods", f"{methods!r}: must be a non-empty list of {', '.join(METHODS)}")
    mp = data.get("method_params", {}) or {}
    if not isinstance(mp, dict) or any(m not in methods for m in mp):
        raise SpaceError("method_params", f"keys must be among the space's methods {methods}")
    return Space(
        name=str(data.get("name") or os.path.splitext(os.path.basename(source))[0]),
        description=str(data.get("description", f"from {source}")),
        methods=tuple(methods),
        params=parse_params(data.get("params", {}) or {}),
        method_params={m: parse_params(p or {}) for m, p in mp.items()},
    )


def parse_params(raw: Mapping[str, Any]) -> dict[str, Dist]:
    if not isinstance(raw, dict):
        raise SpaceError("params", "must be a mapping of parameter name -> distribution or fixed value")
    return {name: parse_dist(name, spec) for name, spec in raw.items()}


def parse_dist(name: str, spec: Any) -> Dist:
    """A plain value is fixed; a mapping needs ``type`` in float|int|categorical|fixed."""
    if not isinstance(spec, dict):
        return Dist("fixed", value=spec)
    kind = spec.get("type")
    if kind not in KINDS:
        raise SpaceError(name, f"type {kind!r} is not one of {', '.join(KINDS)}")
    extra = sorted(set(spec) - {"type", "low", "high", "log", "choices", "value"})
    if extra:
        raise SpaceError(name, f"unknown key {extra[0]!r} (allowed: type, low, high, log, choices, value)")
    if kind == "fixed":
        return Dist("fixed", value=spec.get("value"))
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(name, "categorical needs a non-empty list 'choices'")
        return Dist("categorical", choices=tuple(choices))
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    for key, v in (("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise SpaceError(name, f"{key} = {v!r} is not a finite number")
    if not isinstance(log, bool):
        raise SpaceError(name, f"log = {log!r} is not true or false")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(name, f"int range [{low}, {high}] needs integer bounds")
    return Dist(kind, float(low) if kind == "float" else int(low), float(high) if kind == "float" else int(high),
                log)


def validate_space(space: Space) -> None:
    """Check names against TrialConfig, ranges, and every value (bounds, choices, fixed) via from_dict."""
    owners = field_owners()
    for method in space.methods:
        for name, d in space.params_for(method).items():
            if name not in owners:
                raise SpaceError(name, "unknown parameter: not a TrialConfig field "
                                       f"(known: {', '.join(sorted(owners))})")
            if name in ("method", "arch", "seed"):
                raise SpaceError(name, "is set by the sweep (--arch, the space's methods, --seeds), "
                                       "not by the space")
            check_range(name, d)
            for value in sample_values(d):
                check_value(name, value, method)


def check_range(name: str, d: Dist) -> None:
    if d.kind in ("float", "int"):
        if d.low > d.high:
            raise SpaceError(name, f"low {d.low} > high {d.high}")
        if d.kind == "float" and d.low == d.high:
            raise SpaceError(name, f"empty range [{d.low}, {d.high}] (use a fixed value)")
        if d.log and d.low <= 0:
            raise SpaceError(name, f"log range [{d.low}, {d.high}] must be > 0 (it touches or crosses zero)")


def sample_values(d: Dist) -> list[Any]:
    """The values that must be valid configs: the range ends, every choice, the fixed value."""
    if d.kind == "fixed":
        return [d.value]
    if d.kind == "categorical":
        return list(d.choices)
    return [d.low, d.high]


def check_value(name: str, value: Any, method: str) -> None:
    flat = {name: value, "method": method}
    if name in ("rho",):  # rho's upper check depends on rho_max: test the value alone against a wide cap
        flat["rho_max"] = max(float(value), 1.0) if isinstance(value, (int, float)) else 1.0
    try:
        TrialConfig.from_dict(flat)
    except ConfigError as e:
        raise SpaceError(name, f"value {value!r} is not allowed: {e.message}") from None


def suggest(trial: Any, space: Space, method: str) -> dict[str, Any]:
    """Ask an optuna.Trial for every searched parameter of ``method``; return the flat dict (fixed included)."""
    out: dict[str, Any] = {}
    for name, d in space.params_for(method).items():
        if d.kind == "fixed":
            out[name] = d.value
        elif d.kind == "categorical":
            out[name] = trial.suggest_categorical(name, list(d.choices))
        elif d.kind == "int":
            out[name] = trial.suggest_int(name, d.low, d.high, log=d.log)
        else:
            out[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
    return out


def describe_spaces() -> str:
    """Text listing of every built-in space, its methods and parameters (for ``python -m sweep spaces``)."""
    lines = []
    for space in BUILTIN.values():
        lines.append(f"{space.name}: {space.description}")
        lines.append(f"  methods: {', '.join(space.methods)}" + ("  (grid, no search)" if space.grid else ""))
        for method in space.methods:
            for name, d in space.params_for(method).items():
                lines.append(f"  [{method}] {name}: {d.describe()}")
    lines.append("a .toml/.yaml file: see the sweep.spaces module docstring for the format")
    return "\n".join(lines)
