"""Typed, frozen configuration for one trial.

A trial's configuration is a flat ``dict`` (what Ray Tune and Optuna hand around). It becomes typed
dataclasses in exactly one place, :func:`TrialConfig.from_dict`, which rejects unknown keys and
out-of-range values with a :class:`ConfigError` naming the field and what is allowed.

Every field name is unique across the sections, so the flat key is simply the field name
(``lr``, ``rho``, ``dense_epochs`` ...). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from vocabulary import registry

ARCHS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
DATASETS = ("cifar10", "cifar100", "digits", "synthetic")
# The dataset decides the classifier's outputs (ModelConfig.num_classes follows it; CIFAR-100: its 100 fine labels)
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10, "synthetic": 10}
# The datasets that data_dir can give, and the folder of their python on-disk layout inside it
DATA_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
METHODS = tuple(registry.METHODS)  # the pruning methods: vocabulary/registry.py declares each
SPARSITY_SETS = tuple(registry.SETS)
MAGNITUDE_SCHEDULES = ("per_step", "one_shot", "gradual")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
INTERVAL_UNITS = ("epoch", "step")
DEVICES = ("auto", "cpu", "cuda")

# Field metadata, read by hyperparameter_fields() and TrialConfig.dense_key(): each fact is declared once, at
# the field it describes, so a new field cannot be forgotten by a hand-written list somewhere else.
DENSE = {"dense": True}  # changes the dense-phase payload: part of the shared dense checkpoint's key
NOT_HP = {"hyperparameter": False}  # how or where a trial runs, not what it computes: not a results column
DENSE_NOT_HP = {**DENSE, **NOT_HP}

# The hyperparameters that only one method reads (its registry entry names them); the other methods' rows
# record them as null.
METHOD_FIELDS = {name: spec.fields for name, spec in registry.METHODS.items()}


class ConfigError(ValueError):
    """A configuration value is invalid. ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# The fields with a fixed set of values: validation and the command-line help both read this.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "arch": ARCHS, "method": METHODS, "sparsity_set": SPARSITY_SETS,
    "schedule": MAGNITUDE_SCHEDULES, "dense_optimizer": OPTIMIZERS, "optimizer": OPTIMIZERS,
    "dense_lr_schedule": LR_SCHEDULES, "lr_schedule": LR_SCHEDULES, "admm_interval_unit": INTERVAL_UNITS,
    "device": DEVICES,
}


def _choice(name: str, value: Any) -> None:
    allowed = CHOICES[name]
    if value not in allowed:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(allowed)}")


def _range(name: str, value: Any, lo: float, hi: float, *, lo_open=False, hi_open=False, kind=float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ConfigError(name, f"{value!r} is not {'an integer' if kind is int else 'a number'}")
    if not math.isfinite(value):
        raise ConfigError(name, f"{value!r} is not finite")
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        raise ConfigError(name, f"{value!r} is outside the allowed range {left}{lo}, {hi}{right}")


@dataclass(frozen=True)
class DataConfig:
    # cifar10 or cifar100 (downloaded, or read from data_dir), digits (scikit-learn's, offline) or synthetic
    # (tests)
    dataset: str = field(default="digits", metadata=DENSE)
    # a folder in the dataset's python layout (cifar-10-batches-py or cifar-100-python inside it), read without a
    # download; only with dataset cifar10 or cifar100 (the CLIs imply cifar10 when no dataset is given)
    data_dir: str | None = field(default=None, metadata=DENSE)
    # where cifar10 and cifar100 are downloaded; None: ~/.cache/prunesweep (the bytes are checksummed: not part
    # of any key)
    cache_dir: str | None = field(default=None, metadata=NOT_HP)
    # fraction of the training split held out for validation (tuning never sees the test split)
    val_fraction: float = field(default=0.1, metadata=DENSE)
    # seed of the validation split, independent of the trial seed so every trial sees the same validation set
    split_seed: int = field(default=0, metadata=DENSE)
    batch_size: int = field(default=128, metadata=DENSE)  # images per optimizer step, in every phase
    augment: bool = field(default=True, metadata=DENSE)  # random crop (pad 4) + horizontal flip, on device
    synthetic_train: int = field(default=2048, metadata=DENSE)  # synthetic dataset: training images
    synthetic_test: int = field(default=512, metadata=DENSE)  # synthetic dataset: test images
    # keep only the first N training images (smoke runs, tests); None: all
    limit_train: int | None = field(default=None, metadata=DENSE)

    def validate(self) -> None:
        _choice("dataset", self.dataset)
        _range("val_fraction", self.val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        _range("split_seed", self.split_seed, 0, 2**31 - 1, kind=int)
        _range("batch_size", self.batch_size, 1, 65536, kind=int)
        _range("synthetic_train", self.synthetic_train, 20, 10_000_000, kind=int)
        _range("synthetic_test", self.synthetic_test, 10, 10_000_000, kind=int)
        if self.limit_train is not None:
            _range("limit_train", self.limit_train, 20, 10_000_000, kind=int)
        if self.data_dir is not None and self.dataset not in DATA_FOLDERS:
            # a given option is never ignored: a folder of CIFAR files with another dataset is a contradiction
            raise ConfigError("data_dir", f"a data folder was given but dataset is {self.dataset!r}: drop "
                                          f"data_dir or use dataset {' or '.join(DATA_FOLDERS)}")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = field(default="mobilenet_v2", metadata=DENSE)  # a torchvision MobileNet adapted to 32x32
    width: float = field(default=1.0, metadata=DENSE)  # MobileNet width multiplier (torchvision's width_mult)
    # outputs of the classifier: the dataset's class count (None: taken from the dataset; a given value must
    # equal it)
    num_classes: int | None = field(default=None, metadata=DENSE)

    def validate(self) -> None:
        _choice("arch", self.arch)
        _range("width", self.width, 0.0, 4.0, lo_open=True)
        if self.num_classes is not None:
            _range("num_classes", self.num_classes, 2, 100_000, kind=int)


@dataclass(frozen=True)
class DenseConfig:
    """The dense recipe. Its hash keys the shared dense checkpoint, so both methods start from it."""

    dense_epochs: int = field(default=10, metadata=DENSE)  # epochs of the shared dense phase
    dense_optimizer: str = field(default="sgd", metadata=DENSE)  # the dense phase's optimizer
    dense_lr: float = field(default=0.05, metadata=DENSE)  # the dense phase's lr per batch of batch_size images
    dense_weight_decay: float = field(default=5e-4, metadata=DENSE)  # the dense phase's L2 weight decay
    dense_lr_schedule: str = field(default="cosine", metadata=DENSE)  # the dense phase's lr schedule, per epoch

    def validate(self) -> None:
        _range("dense_epochs", self.dense_epochs, 0, 10_000, kind=int)
        _choice("dense_optimizer", self.dense_optimizer)
        _range("dense_lr", self.dense_lr, 0.0, 10.0, lo_open=True)
        _range("dense_weight_decay", self.dense_weight_decay, 0.0, 1.0)
        _choice("dense_lr_schedule", self.dense_lr_schedule)


@dataclass(frozen=True)
class PruneConfig:
    method: str = "admm"  # the sparsify phase's pruning method
    sparsity: float = 0.5  # fraction of prunable weights set to zero, in [0, 1)
    sparsity_set: str = "uniform"  # the set the weights are projected onto
    nm_n: int = 2  # N:M keeps nm_n of every nm_m consecutive weights along the input dimension
    nm_m: int = 4  # N:M group size (2:4 is what sparse tensor cores run)
    prune_first_conv: bool = False  # the stem conv has few weights and much influence: dense by default
    # magnitude only: per_step (project after every step, pruned weights may return), one_shot (fixed mask)
    # or gradual (cubic ramp, Zhu & Gupta 2017)
    schedule: str = "per_step"
    gradual_interval: int = 1  # magnitude gradual: raise sparsity every N optimizer steps
    rho: float = 0.01  # ADMM penalty weight (seed: 0.01)
    rho_growth: float = 1.0  # rho <- min(rho * rho_growth, rho_max) after each Z/U update
    rho_max: float = 1.0  # the cap of rho's growth
    # Z/U update every admm_interval `admm_interval_unit`s; epochs may be fractional (0.25: four updates per
    # epoch, so a 2-epoch phase still makes several updates); steps must be whole. At least 2 updates must
    # come before the phase's last step (trainables.methods.admm_schedule), or U never acts and "ADMM" is an
    # L2 pull towards the first projection.
    admm_interval: float = 0.25
    admm_interval_unit: str = "epoch"  # the unit of admm_interval

    def validate(self) -> None:
        _choice("method", self.method)
        _range("sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        _choice("sparsity_set", self.sparsity_set)
        _range("nm_m", self.nm_m, 1, 64, kind=int)
        _range("nm_n", self.nm_n, 1, self.nm_m, kind=int)
        _choice("schedule", self.schedule)
        _range("gradual_interval", self.gradual_interval, 1, 1_000_000, kind=int)
        _range("rho", self.rho, 0.0, 1e4, lo_open=True)
        _range("rho_growth", self.rho_growth, 1.0, 100.0)
        _range("rho_max", self.rho_max, self.rho, 1e6)
        _choice("admm_interval_unit", self.admm_interval_unit)
        if self.admm_interval_unit == "step":
            _range("admm_interval", self.admm_interval, 1, 1_000_000, kind=int)
        else:
            _range("admm_interval", self.admm_interval, 0.0, 10_000, lo_open=True)
        fixed = registry.SETS[self.sparsity_set].fixed_level
        if self.method == "magnitude" and self.schedule == "gradual" and fixed:
            # a cubic ramp of the sparsity has no meaning for a set whose pattern fixes the level (n:m)
            names = [n for n, spec in registry.SETS.items() if not spec.fixed_level]
            ramped = " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
            raise ConfigError("schedule", f"gradual needs a sparsity_set that reads sparsity ({ramped}): "
                                          f"{self.sparsity_set} has one fixed sparsity; use per_step or one_shot "
                                          f"with {self.sparsity_set}")

    @property
    def nominal_sparsity(self) -> float:
        """The nominal level (N:M: 1 - n/m on the layers it applies to). The exact overall target, which
        N:M leaves below this, is the set's own ``SparsitySet.sparsity`` (recorded as target_sparsity)."""
        return 1.0 - self.nm_n / self.nm_m if self.sparsity_set == "nm" else self.sparsity


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of the sparsify and fine-tune phases (the part the sweep tunes)."""

    sparsify_epochs: int = 5  # epochs of ADMM or magnitude pruning before the hard projection
    finetune_epochs: int = 5  # epochs of masked fine-tuning after it
    optimizer: str = "adam"  # sparsify and fine-tune optimizer (the seed used Adam, lr 1e-3)
    lr: float = 1e-3  # sparsify learning rate per batch of batch_size images
    momentum: float = field(default=0.9, metadata=DENSE)  # SGD only (Nesterov), the dense phase's too
    weight_decay: float = 0.0  # L2 weight decay of the sparsify and fine-tune phases
    lr_schedule: str = "constant"  # the sparsify and fine-tune lr schedule (cosine runs to 0 within each phase)
    finetune_lr_scale: float = 1.0  # fine-tune lr = lr * finetune_lr_scale
    # label smoothing of the cross-entropy in every phase, the dense one's too
    label_smoothing: float = field(default=0.0, metadata=DENSE)
    # training batches used to re-estimate BatchNorm statistics before every accuracy (DESIGN rules 9, 10)
    bn_recal_batches: int = field(default=50, metadata=DENSE)

    def validate(self) -> None:
        _range("sparsify_epochs", self.sparsify_epochs, 0, 10_000, kind=int)
        _range("finetune_epochs", self.finetune_epochs, 0, 10_000, kind=int)
        _choice("optimizer", self.optimizer)
        _range("lr", self.lr, 0.0, 10.0, lo_open=True)
        _range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _range("weight_decay", self.weight_decay, 0.0, 1.0)
        _choice("lr_schedule", self.lr_schedule)
        _range("finetune_lr_scale", self.finetune_lr_scale, 0.0, 100.0, lo_open=True)
        _range("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        _range("bn_recal_batches", self.bn_recal_batches, 0, 100_000, kind=int)


@dataclass(frozen=True)
class RunConfig:
    seed: int = field(default=0, metadata=DENSE_NOT_HP)  # trial seed: weight init, data order, augmentation
    # auto: cuda when present, else cpu (the resolved device and its precision are part of the dense key)
    device: str = field(default="auto", metadata=NOT_HP)
    # measure test accuracy at dense/pre/post/final (never used for selection)
    eval_test: bool = field(default=True, metadata=DENSE_NOT_HP)
    # torch intra-op threads; None leaves torch's default
    max_threads: int | None = field(default=None, metadata=NOT_HP)
    # also train (or fetch from the dense store) the dense control: the dense checkpoint trained on for
    # sparsify_epochs + finetune_epochs more with the dense recipe, so "dense" gets the same budget (rule 11)
    dense_control: bool = field(default=True, metadata=NOT_HP)
    # write the final model (sparse encoding: results/models/.../<trial_id>.pt) beside the trial's tables
    keep_model: bool = field(default=True, metadata=NOT_HP)

    def validate(self) -> None:
        _range("seed", self.seed, 0, 2**31 - 1, kind=int)
        _choice("device", self.device)
        if self.max_threads is not None:
            _range("max_threads", self.max_threads, 1, 1024, kind=int)


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "dense": DenseConfig,
    "prune": PruneConfig,
    "train": TrainConfig,
    "run": RunConfig,
}


def field_help() -> dict[str, str]:
    """Each field's comment in this file: the comment on its line, else the comment lines right above it.

    The CLIs' help texts come from here, so a field's documentation is written once, at the field; the
    method and sparsity_set texts add each registered one's help (vocabulary/registry.py).
    """
    import inspect
    import tokenize

    out: dict[str, str] = {}
    for section in _SECTIONS.values():
        above: list[str] = []
        field_line: dict[int, str] = {}
        names = {f.name for f in fields(section)}
        tokens = list(tokenize.generate_tokens(io.StringIO(inspect.getsource(section)).readline))
        for i, tok in enumerate(tokens):
            if tok.type == tokenize.NAME and tok.string in names and tok.start[1] == 4 and tokens[i + 1].string == ":":
                field_line[tok.start[0]] = tok.string
                out[tok.string] = " ".join(above)
                above = []
            elif tok.type == tokenize.COMMENT:
                text = tok.string.lstrip("#").strip()
                if tok.start[0] in field_line:  # a trailing comment wins over the lines above
                    out[field_line[tok.start[0]]] = text
                elif tok.start[1] == 4:
                    above.append(text)
            elif tok.type == tokenize.NAME and tok.start[1] == 4:
                above = []  # a comment above a method or a docstring, not a field's
    # the registered methods and sets, each with its own line of help: a new one is listed by registering it
    for name, specs in (("method", registry.METHODS), ("sparsity_set", registry.SETS)):
        out[name] = f"{out[name]} ({registry.choices_help(specs)})"
    return out


@dataclass(frozen=True)
class TrialConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        # the dataset decides the class count: an unset num_classes becomes it here, so to_dict, the dense key
        # and the results hold the number of outputs the classifier really has (validate refuses a contradiction)
        n = NUM_CLASSES.get(self.data.dataset)
        if self.model.num_classes is None and n is not None:
            object.__setattr__(self, "model", dataclasses.replace(self.model, num_classes=n))

    @classmethod
    def from_dict(cls, flat: Mapping[str, Any]) -> "TrialConfig":
        """Build and validate from a flat dict; unknown keys raise ConfigError naming them."""
        owner = field_owners()
        unknown = sorted(k for k in flat if k not in owner)
        if unknown:
            raise ConfigError(unknown[0], f"unknown configuration key (known keys: {', '.join(sorted(owner))})")
        parts: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, value in flat.items():
            parts[owner[key]][key] = _coerce(_SECTIONS[owner[key]], key, value)
        cfg = cls(**{name: _SECTIONS[name](**kw) for name, kw in parts.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Flat dict, the inverse of from_dict."""
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def validate(self) -> None:
        for name in _SECTIONS:
            getattr(self, name).validate()
        n = NUM_CLASSES[self.data.dataset]
        if self.model.num_classes != n:
            raise ConfigError("num_classes", f"{self.model.num_classes} contradicts dataset {self.data.dataset}, "
                                             f"which has {n} classes: drop num_classes (the dataset sets it)")

    def dense_key(self, device: str = "cpu") -> str:
        """Identity of the dense checkpoint on a ``device`` type ("cpu" | "cuda"; it fixes the precision).

        Every field that changes the dense payload (weights, BN buffers, dense accuracies) carries the DENSE
        metadata and is in the key, nothing else is, so the ADMM and the magnitude trial of one (arch, seed,
        recipe) share one dense model (DESIGN rule 1).
        """
        ident = {name: value for name, value in self.to_dict().items() if name in dense_fields()}
        ident["device"], ident["precision"] = device, precision(device)
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.model.arch}-{self.data.dataset}-s{self.run.seed}-{digest}"

    def control_key(self, device: str = "cpu") -> str:
        """Identity of the dense control: the dense checkpoint trained ``control_epochs`` more (rule 11)."""
        return f"control-{self.dense_key(device)}-e{self.control_epochs}"

    @property
    def control_epochs(self) -> int:
        """Epochs the dense control trains beyond the dense phase: the pruned trials' sparsify + fine-tune."""
        return self.train.sparsify_epochs + self.train.finetune_epochs

    def hyperparameters(self) -> dict[str, Any]:
        """The trials-table hyperparameter columns: every hyperparameter field, the other method's ones null."""
        flat = self.to_dict()
        other = {f for m, names in METHOD_FIELDS.items() if m != self.prune.method for f in names}
        return {name: (None if name in other else flat[name]) for name in hyperparameter_fields()}


def precision(device: str) -> str:
    """The compute precision of a device type: bf16 autocast on CUDA, fp32 elsewhere (trainables.trial)."""
    return "bf16" if device == "cuda" else "fp32"


def all_fields() -> list[dataclasses.Field]:
    return [f for section in _SECTIONS.values() for f in fields(section)]


def dense_fields() -> tuple[str, ...]:
    """Flat keys that change the dense payload (DENSE metadata)."""
    return tuple(f.name for f in all_fields() if f.metadata.get("dense"))


def hyperparameter_fields() -> tuple[str, ...]:
    """Flat keys that identify a configuration: every field except the seed and the NOT_HP ones.

    ``arch`` and ``method`` are among them (they also partition the results folders). Two trials with
    equal values here are seeds of one configuration; analysis groups by exactly these.
    """
    return tuple(f.name for f in all_fields() if f.metadata.get("hyperparameter", True))


def field_owners() -> dict[str, str]:
    """Map each flat key to its section name."""
    owner: dict[str, str] = {}
    for name, section in _SECTIONS.items():
        for f in fields(section):
            assert f.name not in owner, f"duplicate config field {f.name}"
            owner[f.name] = name
    return owner


def _coerce(section: type, key: str, value: Any) -> Any:
    """Accept ints for float fields and numpy scalars (Optuna hands those out); reject wrong types."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    ftype = {f.name: f.type for f in fields(section)}[key]
    if ftype == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if ftype == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if ftype == "bool" and not isinstance(value, bool):
        raise ConfigError(key, f"{value!r} is not true or false")
    if ftype == "str" and not isinstance(value, str):
        raise ConfigError(key, f"{value!r} is not a string")
    return value
