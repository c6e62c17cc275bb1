"""The sweep's own options as one frozen, typed record, :class:`SweepOptions`, and ``sweep.json``, the file an
experiment keeps them in: written when a sweep starts (again by a longer search and by a confirmation), read
by resume and confirm. A record is made in exactly one place, :meth:`SweepOptions.from_dict`, which rejects
unknown keys and bad values with a :class:`SweepOptionsError` naming the key. No Ray here.

analysis/ reads the same file as a plain dict (analysis.load.read_sweep_options) and never imports sweep: the
JSON keys it reads (``seeds``, ``sampler``, ``storage``, ``optuna_storage``, ``confirm``, ``reference``) keep
their names and shapes.

Versions. 1: the file before this record (no ``version`` key): the run command's argparse namespace plus
``archs``, ``base`` and ``optuna_storage``. Reading it drops the namespace's echo of what ``archs`` and
``base`` hold resolved and of what belongs to one command (:data:`DROPPED_BY_V2`), and reads a missing
``keep_models`` as "all", as the sweep did (a hand-written file keeps its models). 2: :data:`VERSION`, the
record's fields and ``"version": 2``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from vocabulary.config import ARCHS, METHODS, field_owners
from vocabulary.registry import DEFAULT_REFERENCE

__all__ = ["SweepOptions", "SweepOptionsError", "VERSION", "OPTIONS_FILE", "JOURNAL", "SAMPLERS", "SCHEDULERS",
           "KEEP_MODELS", "CONFIRM_KEY", "DROPPED_BY_V2", "read", "write"]

VERSION = 2
OPTIONS_FILE = "sweep.json"
JOURNAL = "optuna.journal"  # the Optuna storage, inside the experiment folder
SAMPLERS = ("tpe", "gp", "nsga2")  # Optuna samplers by name (sweep.searcher.make_sampler builds them)
SCHEDULERS = ("none", "asha")
# which final models a sweep keeps (results/models/..., trainables.model_file): every ok trial's; only the
# chosen configurations' seeds (at each arch, method and level: the rest are deleted when the sweep ends); none
KEEP_MODELS = ("chosen", "all", "none")
CONFIRM_KEY = "confirm"  # sweep.json: {"seeds": [...]}, the field confirm_seeds
# Version 1 keys that version 2 drops: the run command's own (command, verbose) and its raw echo of options
# that archs (arch) and base (dataset, data_dir, width and the epoch counts, after --set) hold resolved.
DROPPED_BY_V2 = ("command", "verbose", "arch", "dataset", "data_dir", "width", "dense_epochs", "sparsify_epochs",
                 "finetune_epochs")


class SweepOptionsError(ValueError):
    """A sweep option (a key of sweep.json) is invalid. ``field`` names the key, the message what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SweepOptions:
    """Everything a sweep runs with beyond one trial's config: what resume and confirm read back."""

    name: str = ""  # the experiment's name: its folder in storage ("": not recorded)
    storage: str = ""  # where experiments live: an absolute path or a URI ("": not recorded)
    space: str = "admm"  # a built-in space's name or a space file (sweep.spaces.load_space)
    archs: tuple[str, ...] = ("mobilenet_v2",)
    base: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))  # the flat
    # TrialConfig fields every trial shares (read-only)
    set: tuple[str, ...] = ()  # the --set KEY=VALUE items (their keys are in base and never searched)
    trials: int = 8  # Optuna configurations per (arch, method) study (a longer search raises it)
    seeds: int = 1  # seeds per configuration
    sampler: str = "tpe"
    scheduler: str = "none"
    keep_models: str = "chosen"
    max_failures: int = 2
    max_concurrent: int = 0  # 0: as many as resources allow
    local: bool = False  # Ray started on the driver's machine (else the running cluster)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    optuna_storage: str = JOURNAL  # relative to the experiment folder
    reference: str = DEFAULT_REFERENCE  # the method every other method is compared against (a METHODS name)
    grid: bool = False  # the space is a grid (one configuration per study, nothing searched: sweep.spaces)
    sampler_startup_trials: int = 0  # SAMPLER_STARTUP[sampler] as the sweep ran (0: not recorded)
    tune_dir: str | None = None  # a longer search's Tune folder inside the experiment (extend-<k>), or None
    # the N of the longer search (resume --trials N) whose Tune state is tune_dir: its target total is trials;
    # 0 when there is none or it was not recorded (sweep.driver: the same command re-run finishes it)
    extend_trials: int = 0
    confirm_seeds: tuple[int, ...] = ()  # python -m sweep confirm's seeds (JSON: "confirm": {"seeds": [...]})
    version: int = VERSION

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "SweepOptions":
        """Build and validate from sweep.json's object (version 1 or 2); SweepOptionsError names a bad key."""
        if not isinstance(raw, Mapping):
            raise SweepOptionsError(OPTIONS_FILE, f"expected a JSON object, got {type(raw).__name__}")
        data = dict(raw)
        version = data.pop("version", 1)
        if isinstance(version, bool) or version not in (1, VERSION):
            raise SweepOptionsError("version", f"{version!r} is not a version this sweep reads (1 or {VERSION}): "
                                               "written by a newer prunesweep?")
        if version == 1:
            data = upgrade_v1(data)
        unknown = sorted(k for k in data if k not in PARSERS)
        if unknown:
            raise SweepOptionsError(unknown[0], f"unknown sweep option (known: {', '.join(sorted(PARSERS))})")
        return cls(**{attr: parse(key, data[key]) for key, (attr, parse) in PARSERS.items() if key in data})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of sweep.json, the inverse of from_dict (``confirm`` only once there are seeds)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "confirm_seeds"}
        out.update(archs=list(self.archs), set=list(self.set), base=dict(self.base))
        if self.confirm_seeds:
            out[CONFIRM_KEY] = {"seeds": list(self.confirm_seeds)}
        return out


def upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version 1 object (no "version" key) in version 2's keys: DROPPED_BY_V2 dropped, a missing
    keep_models read as "all" (what the sweep did with such a file)."""
    out = {k: v for k, v in data.items() if k not in DROPPED_BY_V2}
    out.setdefault("keep_models", "all")
    return out


# -- the parsers: (key, value) -> the field's value, or SweepOptionsError naming the key --------------------
def _fail(key: str, value: Any, allowed: str):
    raise SweepOptionsError(key, f"{value!r} is not {allowed}")


def _text(key: str, value: Any) -> str:
    return value if isinstance(value, str) and value else _fail(key, value, "a non-empty string")


def _string(key: str, value: Any) -> str:
    return value if isinstance(value, str) else _fail(key, value, "a string")


def _optional_text(key: str, value: Any) -> str | None:
    return None if value is None else _text(key, value)


def _flag(key: str, value: Any) -> bool:
    return value if isinstance(value, bool) else _fail(key, value, "true or false")


def _integer(low: int) -> Callable[[str, Any], int]:
    def parse(key: str, value: Any) -> int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return value if ok else _fail(key, value, f"an integer >= {low}")
    return parse


def _number(low: float, *, above: bool) -> Callable[[str, Any], float]:
    def parse(key: str, value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and (value > low if above else value >= low)
        return float(value) if ok else _fail(key, value, f"a number {'>' if above else '>='} {low:g}")
    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        return value if value in choices else _fail(key, value, f"one of {', '.join(choices)}")
    return parse


def _texts(key: str, value: Any) -> tuple[str, ...]:
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return tuple(value) if ok else _fail(key, value, "a list of strings")


def _archs(key: str, value: Any) -> tuple[str, ...]:
    ok = isinstance(value, (list, tuple)) and value and all(v in ARCHS for v in value)
    return tuple(value) if ok else _fail(key, value, f"a non-empty list from {', '.join(ARCHS)}")


def _base(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(key, value, "an object of TrialConfig fields")
    owners = field_owners()
    unknown = sorted(k for k in value if k not in owners)
    if unknown:
        raise SweepOptionsError(f"{key}.{unknown[0]}", "not a TrialConfig field")
    return types.MappingProxyType(dict(value))


def _confirm(key: str, value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or set(value) - {"seeds"}:
        _fail(key, value, 'an object {"seeds": [...]}')
    seeds = value.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                               for s in seeds):
        _fail(f"{key}.seeds", seeds, "a list of integers >= 0")
    return tuple(seeds)


# sweep.json key -> (SweepOptions field, parser). Every field but version has one; the keys are the fields'
# names except confirm (the field confirm_seeds).
PARSERS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "name": ("name", _string), "storage": ("storage", _string), "space": ("space", _text),
    "archs": ("archs", _archs), "base": ("base", _base), "set": ("set", _texts),
    "trials": ("trials", _integer(1)), "seeds": ("seeds", _integer(1)), "sampler": ("sampler", _choice(SAMPLERS)),
    "scheduler": ("scheduler", _choice(SCHEDULERS)), "keep_models": ("keep_models", _choice(KEEP_MODELS)),
    "max_failures": ("max_failures", _integer(0)), "max_concurrent": ("max_concurrent", _integer(0)),
    "local": ("local", _flag), "cpus_per_trial": ("cpus_per_trial", _number(0, above=True)),
    "gpus_per_trial": ("gpus_per_trial", _number(0, above=False)), "optuna_storage": ("optuna_storage", _text),
    "reference": ("reference", _choice(METHODS)), "tune_dir": ("tune_dir", _optional_text),
    "extend_trials": ("extend_trials", _integer(0)),
    "grid": ("grid", _flag), "sampler_startup_trials": ("sampler_startup_trials", _integer(0)),
    CONFIRM_KEY: ("confirm_seeds", _confirm),
}


def read(experiment: str) -> SweepOptions | None:
    """The options in ``<experiment>/sweep.json``, or None when there is none. SweepOptionsError when the file
    is not JSON (field: sweep.json) or a value is bad (field: its key)."""
    from results.files import read_bytes

    raw = read_bytes(experiment, OPTIONS_FILE)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise SweepOptionsError(OPTIONS_FILE, f"not JSON ({e})") from None
    return SweepOptions.from_dict(data)


def write(experiment: str, options: SweepOptions) -> None:
    """``<experiment>/sweep.json``, atomically (results.files.write_bytes)."""
    from results.files import write_bytes

    write_bytes(experiment, OPTIONS_FILE, json.dumps(options.to_dict(), indent=1, sort_keys=True).encode())
