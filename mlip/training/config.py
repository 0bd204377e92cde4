"""Training configuration: YAML → validated dataclasses, with dotted command-line overrides.

Unknown keys are reported with a "did you mean" suggestion and wrong types with the expected
type, both as one-line :class:`~mlip.errors.MLIPError` messages naming the config file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from mlip.errors import MLIPError
from mlip.targets import ENERGY_KINDS, TENSOR_KINDS, UNIT_FACTORS, TargetSpec


@dataclass
class DataConfig:
    """Where the structures are and how graphs are built."""

    train_file: str = ""
    valid_file: str | None = None
    test_file: str | None = None
    valid_fraction: float = 0.1
    valid_split: Any = "random"  # random | last | first (contiguous, for MD) | [validation indices]
    max_structures: int | None = None  # take the first N training structures (quick runs)
    format: str | None = None  # ase.io format; None = guess from the extension
    cutoff: float = 5.0  # Å
    min_distance: float = 0.1  # Å; closer atoms are an input error
    e0s: Any = "auto"  # "auto" (isolated atoms, else fit) | "fit" | "zero" | {element: eV}
    preprocessed_dir: str | None = None  # train from this `mlip preprocess` store (streamed from disk)


@dataclass
class ModelConfig:
    """Architecture hyperparameters (see mlip.model.backbone)."""

    channels: int = 64
    num_layers: int = 2
    lmax: int = 3
    num_radial: int = 8
    radial_hidden: int = 64
    readout_hidden: int = 64
    num_vectors: int = 4  # learned vectors per atom for tensor λ-bases
    tensor_hidden: int = 64
    tensor_couplings: int = 0  # > 0: + couplings of two density orders in every tensor basis (λ ≥ 1)
    correlation: int = 2  # 2: power-spectrum invariants (3-body per layer); 3: + bispectrum (4-body)
    bispectrum_channels: int | None = None  # channels with bispectrum invariants (None: all)
    bond_channels: int = 0  # channels of the bond projections of the previous density (0 = off)
    pair_repulsion: bool = False  # + a learned short-range pair repulsion (mlip.model.pair)
    linear_update: bool = False  # + a linear path next to each layer's update MLP
    update_mlp: bool = True  # False: each layer's update is linear in [h, invariants] (experimental)
    radial_species: int = 0  # > 0: element-pair radial functions (receiver/sender embeddings of this width)
    element_update: bool = False  # + a per-element linear path in each layer's update (experimental)
    density_messages: int = 0  # > 0: layers ≥ 2 also receive the neighbours' densities (this many channels)
    density_message_radial: str = "linear"  # their radial functions: linear | mlp | shared (the bond part's)
    density_message_lmax: int | None = None  # transport only the l ≤ this blocks (None: all, up to lmax)


@dataclass
class TargetConfig:
    """One entry of ``targets:``. Names energy/forces/stress are the energy model's outputs."""

    key: str = ""
    weight: float = 1.0
    type: str | None = None  # vector | rank2 | spherical (tensor targets)
    per_atom: bool = False
    irreps: list | None = None  # spherical: [[λ, σ], ...]
    symmetric: bool = True  # rank2: drop the antisymmetric (λ=1, σ=−1) part
    unit: str | None = None  # a name from mlip.targets.UNIT_FACTORS
    unit_factor: float | None = None  # or an explicit factor (file value × factor)
    virial_key: str | None = None  # stress only
    charges: bool = False  # vector (molecular dipole) only: + learned partial charges × positions


@dataclass
class TrainingConfig:
    """Optimisation settings."""

    batch_size: int = 8
    valid_batch_size: int = 32
    max_epochs: int = 100
    optimizer: str = "adam"  # adam | adamw
    amsgrad: bool = False  # the AMSGrad variant (MACE's default)
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "plateau"  # plateau | cosine (over max_time_minutes if set, else max_epochs) | none
    lr_factor: float = 0.5
    scheduler_patience: int = 5
    min_lr: float = 1e-6
    ema_decay: float | None = 0.99  # None disables EMA
    clip_grad_norm: float | None = 10.0
    early_stopping_patience: int | None = 30
    num_workers: int = 0
    max_time_minutes: float | None = None  # stop after this wall-clock budget
    skip_nan_batches: int = 10  # consecutive NaN/Inf losses tolerated before stopping
    loss_normalisation: str = "scale"  # scale (each target's MSE / its training scale²) | none
    # Stage two (as MACE's): from this fraction of the budget (max_time_minutes if set, else
    # max_epochs) on, train with stage_two_weights (target → weight; others keep theirs) and
    # stage_two_lr; the best-model tracking restarts, since the validation score's weights changed.
    stage_two_start: float | None = None
    stage_two_lr: float | None = None  # None: lr / 10
    stage_two_weights: dict[str, float] = field(default_factory=dict)
    # Copy the best model so far to output_dir/snapshots/model_<m>min.pt at the end of the first
    # epoch past each mark (minutes of wall time since training began): learning curves of one run.
    snapshot_minutes: list | None = None


@dataclass
class LoggingConfig:
    """Progress bar, CSV metrics and Weights & Biases."""

    progress_bar: bool = True
    wandb: bool = False
    wandb_project: str = "mlip"
    wandb_mode: str = "offline"  # online | offline | disabled
    wandb_name: str | None = None


@dataclass
class Config:
    """Top-level config of ``mlip train``."""

    output_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | float64
    resume: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    targets: dict[str, TargetConfig] = field(
        default_factory=lambda: {"energy": TargetConfig(key="energy"), "forces": TargetConfig(key="forces")}
    )
    training: TrainingConfig = field(default_factory=TrainingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    # ---------------------------------------------------------------- derived
    def target_specs(self) -> list[TargetSpec]:
        """The targets as :class:`TargetSpec` (energy first)."""
        specs = []
        for name, tc in self.targets.items():
            factor = 1.0
            if tc.unit_factor is not None:
                factor = float(tc.unit_factor)
            elif tc.unit is not None:
                factor = UNIT_FACTORS[tc.unit]
            if name in ENERGY_KINDS:
                kind, irreps = name, ()
            else:
                kind = tc.type or ""
                irreps = ()  # vector / rank2: TargetSpec fills in all their blocks (default_irreps)
                if kind == "spherical":
                    irreps = tuple((int(lam), int(sig)) for lam, sig in (tc.irreps or []))
            specs.append(
                TargetSpec(
                    name=name,
                    kind=kind,
                    key=tc.key or name,
                    per_atom=tc.per_atom,
                    irreps=irreps,
                    weight=float(tc.weight),
                    unit_factor=factor,
                    virial_key=tc.virial_key,
                    symmetric=tc.symmetric,
                    charges=tc.charges,
                )
            )
        return sorted(
            specs,
            key=lambda s: (
                s.kind not in ENERGY_KINDS,
                ENERGY_KINDS.index(s.kind) if s.kind in ENERGY_KINDS else 0,
            ),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check_type(value: Any, tp: Any, loc: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, loc, source)
            except MLIPError as err:
                errors.append(str(err))
        names = " or ".join(_type_name(a) for a in args)
        raise MLIPError(f"{source}: '{loc}' should be {names}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise MLIPError(f"{source}: '{loc}' should be a list, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise MLIPError(f"{source}: '{loc}' should be a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp)
        return {
            _check_type(k, key_type, f"{loc} key", source): _check_type(v, value_type, f"{loc}.{k}", source)
            for k, v in value.items()
        }
    if tp is bool:
        if not isinstance(value, bool):
            raise MLIPError(f"{source}: '{loc}' should be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MLIPError(f"{source}: '{loc}' should be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MLIPError(f"{source}: '{loc}' should be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise MLIPError(f"{source}: '{loc}' should be a string, got {value!r}")
        return value
    return value


# Names users bring from other codes (MACE, NequIP, SchNetPack) → our key, for "did you mean".
ALIASES = {
    "learning_rate": "lr",
    "epochs": "max_epochs",
    "max_num_epochs": "max_epochs",
    "num_epochs": "max_epochs",
    "r_max": "cutoff",
    "r_cut": "cutoff",
    "rcut": "cutoff",
    "num_channels": "channels",
    "hidden_channels": "channels",
    "max_L": "lmax",
    "l_max": "lmax",
    "num_interactions": "num_layers",
    "num_radial_basis": "num_radial",
    "batch": "batch_size",
    "ema": "ema_decay",
    "patience": "early_stopping_patience",
    "train_file_path": "train_file",
    "valid_file_path": "valid_file",
    "test_file_path": "test_file",
    "seed_value": "seed",
    "default_dtype": "dtype",
    "clip_grad": "clip_grad_norm",
}


def _suggest(key: str, names: list[str]) -> str | None:
    alias = ALIASES.get(key)
    if alias in names:
        return alias
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    return close[0] if close else None


def _build(cls: type, raw: Any, loc: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise MLIPError(f"{source}: '{loc or 'top level'}' should be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        where = f"{loc}.{key}" if loc else str(key)
        if key not in names:
            close = _suggest(str(key), names)
            hint = f" (did you mean '{close}'?)" if close else f" (known: {', '.join(names)})"
            raise MLIPError(f"{source}: unknown key '{where}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, where, source)
        elif key == "targets" and cls is Config:
            if not isinstance(value, dict) or not value:
                raise MLIPError(f"{source}: 'targets' should be a non-empty mapping of name → settings")
            kwargs[key] = {str(n): _build(TargetConfig, v, f"targets.{n}", source) for n, v in value.items()}
        else:
            kwargs[key] = _check_type(value, tp, where, source)
    return cls(**kwargs)


def _matches_choice(value: str, choice: str) -> bool:
    """``value == choice``; a choice ending in ``:N`` (``cuda:N``) stands for any index ``cuda:0``, …"""
    if choice.endswith(":N"):
        return re.fullmatch(re.escape(choice[:-1]) + r"\d+", value) is not None
    return value == choice


def _validate(cfg: Config, source: str) -> None:
    choices: dict[str, tuple[str, tuple[str, ...]]] = {  # key → (value, allowed values)
        "device": (cfg.device, ("auto", "cpu", "cuda", "cuda:N")),  # N: a device index
        "dtype": (cfg.dtype, ("float32", "float64")),
        "training.optimizer": (cfg.training.optimizer, ("adam", "adamw")),
        "model.density_message_radial": (cfg.model.density_message_radial, ("linear", "mlp", "shared")),
        "training.scheduler": (cfg.training.scheduler, ("plateau", "cosine", "none")),
        "training.loss_normalisation": (cfg.training.loss_normalisation, ("scale", "none")),
        "logging.wandb_mode": (cfg.logging.wandb_mode, ("online", "offline", "disabled")),
    }
    for key, (value, allowed) in choices.items():
        if any(_matches_choice(value, choice) for choice in allowed):
            continue
        close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        listed = ", ".join(allowed)
        raise MLIPError(f"{source}: '{key}' has an invalid value {value!r} (allowed: {listed}){hint}")
    if not cfg.data.train_file:
        raise MLIPError(f"{source}: 'data.train_file' is required")
    if not 0.0 <= cfg.data.valid_fraction < 1.0:
        raise MLIPError(f"{source}: 'data.valid_fraction' must be in [0, 1)")
    split = cfg.data.valid_split
    if isinstance(split, str):
        if split not in ("random", "last", "first"):
            raise MLIPError(
                f"{source}: 'data.valid_split' must be random, last, first or a list of structure "
                f"indices (got {split!r})"
            )
    elif not (isinstance(split, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in split)):
        raise MLIPError(f"{source}: 'data.valid_split' must be random, last, first or a list of integers")
    elif any(i < 0 for i in split):
        raise MLIPError(f"{source}: 'data.valid_split' indices must be ≥ 0 (got {min(split)})")
    _check_ranges(cfg, source)
    # settings that select a subset of another: the channels, or the density's l = 0 .. lmax
    for key, bound in (
        ("density_messages", "channels"),
        ("bispectrum_channels", "channels"),
        ("density_message_lmax", "lmax"),
    ):
        value, limit = getattr(cfg.model, key), getattr(cfg.model, bound)
        if value is not None and value > limit:
            raise MLIPError(f"{source}: 'model.{key}' ({value}) cannot exceed 'model.{bound}' ({limit})")
    _validate_stage_two_and_snapshots(cfg, source)
    for name, tc in cfg.targets.items():
        if tc.weight < 0:
            raise MLIPError(f"{source}: 'targets.{name}.weight' must be ≥ 0 (got {tc.weight})")
        if tc.charges and (name in ENERGY_KINDS or tc.type != "vector" or tc.per_atom):
            kind = name if name in ENERGY_KINDS else f"{'per-atom ' if tc.per_atom else ''}{tc.type}"
            raise MLIPError(
                f"{source}: 'targets.{name}.charges' needs a per-structure vector target (a molecular "
                f"dipole); '{name}' is {kind}"
            )
        if name in ENERGY_KINDS:
            continue
        if tc.type is None:
            raise MLIPError(
                f"{source}: target '{name}' needs 'type' (one of {', '.join(TENSOR_KINDS)}); "
                f"energy targets must be named energy, forces or stress"
            )
        if tc.type not in TENSOR_KINDS:
            raise MLIPError(
                f"{source}: 'targets.{name}.type' is {tc.type!r}, which is not one of "
                f"{', '.join(TENSOR_KINDS)} (energy targets must be named energy, forces or stress)"
            )
        if tc.type == "spherical":
            irreps = tc.irreps or []
            ok = irreps and all(
                isinstance(x, list)
                and len(x) == 2
                and x[1] in (1, -1)
                and isinstance(x[0], int)
                and x[0] >= 0
                for x in irreps
            )
            if not ok:
                raise MLIPError(f"{source}: target '{name}' needs 'irreps' like [[2, 1]] (λ ≥ 0, σ = ±1)")
    for name, tc in cfg.targets.items():
        if tc.unit is not None and tc.unit not in UNIT_FACTORS:
            raise MLIPError(f"{source}: target '{name}' has unknown unit '{tc.unit}'{_unit_hint(tc.unit)}")
    if "forces" in cfg.targets or "stress" in cfg.targets:
        if "energy" not in cfg.targets:
            raise MLIPError(f"{source}: forces/stress targets need an 'energy' target")
    tensors = [name for name in cfg.targets if name not in ENERGY_KINDS]
    if tensors and cfg.model.lmax < 1:
        raise MLIPError(
            f"{source}: 'model.lmax' must be ≥ 1 with tensor targets ({', '.join(tensors)}): their "
            f"λ-bases are built from the l=1 part of the neighbour density (got {cfg.model.lmax})"
        )


def _unit_hint(unit: str) -> str:
    """`` (did you mean 'debye'?; valid: eV, Hartree, ...)`` for an unknown unit name."""
    names = [n for n in UNIT_FACTORS if n]
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(unit.lower(), list(by_lower), n=1, cutoff=0.5)
    guess = f"did you mean '{by_lower[close[0]]}'?; " if close else ""
    return f" ({guess}valid: {', '.join(names)}; or give 'unit_factor')"


# key → (lowest allowed, whether the bound is inclusive, highest allowed or None): one-line errors
# naming the key and the range instead of tracebacks from inside the model.
_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "data.cutoff": (0.0, False, None),
    "data.min_distance": (0.0, True, None),
    "model.channels": (1, True, None),
    "model.num_layers": (1, True, None),
    "model.lmax": (0, True, 8),
    "model.num_radial": (1, True, None),
    "model.radial_hidden": (1, True, None),
    "model.readout_hidden": (1, True, None),
    "model.num_vectors": (3, True, None),  # pseudotensor bases need triple products of 3 vectors
    "model.tensor_hidden": (1, True, None),
    "model.tensor_couplings": (0, True, None),
    "model.correlation": (2, True, 3),
    "model.bispectrum_channels": (1, True, None),
    "model.bond_channels": (0, True, None),
    "model.radial_species": (0, True, None),
    "model.density_messages": (0, True, None),
    "model.density_message_lmax": (0, True, None),
    "training.batch_size": (1, True, None),
    "training.valid_batch_size": (1, True, None),
    "training.max_epochs": (1, True, None),
    "training.lr": (0.0, False, None),
    "training.weight_decay": (0.0, True, None),
    "training.lr_factor": (0.0, False, 1.0),
    "training.scheduler_patience": (0, True, None),
    "training.min_lr": (0.0, True, None),
    "training.ema_decay": (0.0, True, 1.0),
    "training.clip_grad_norm": (0.0, False, None),
    "training.early_stopping_patience": (1, True, None),
    "training.num_workers": (0, True, None),
    "training.max_time_minutes": (0.0, False, None),
    "training.skip_nan_batches": (1, True, None),
}


def _check_ranges(cfg: Config, source: str) -> None:
    for key, (low, inclusive, high) in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            continue
        ok = (value >= low if inclusive else value > low) and (high is None or value <= high)
        if not ok:
            lower = f"≥ {low}" if inclusive else f"> {low}"
            allowed = f"{lower} and ≤ {high}" if high is not None else lower
            raise MLIPError(f"{source}: '{key}' must be {allowed} (got {value!r})")


def _validate_stage_two_and_snapshots(cfg: Config, source: str) -> None:
    t = cfg.training
    if t.stage_two_start is not None and not 0.0 < t.stage_two_start < 1.0:
        raise MLIPError(f"{source}: 'training.stage_two_start' must be in (0, 1) (a fraction of the budget)")
    if t.stage_two_lr is not None and not t.stage_two_lr > 0:
        raise MLIPError(f"{source}: 'training.stage_two_lr' must be positive")
    for name, weight in t.stage_two_weights.items():
        if name not in cfg.targets:
            raise MLIPError(
                f"{source}: 'training.stage_two_weights' names '{name}', which is not a target "
                f"(targets: {', '.join(cfg.targets)})"
            )
        if weight < 0:
            raise MLIPError(f"{source}: 'training.stage_two_weights.{name}' must be >= 0")
    for mark in t.snapshot_minutes or []:
        if isinstance(mark, bool) or not isinstance(mark, (int, float)) or not mark > 0:
            raise MLIPError(f"{source}: 'training.snapshot_minutes' should be a list of positive minutes")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.max_epochs=2"`` → ``(["training", "max_epochs"], 2)`` (value parsed as YAML)."""
    if "=" not in text:
        raise MLIPError(f"override '{text}' should look like key.subkey=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value != "" else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set dotted keys in the raw YAML mapping (creating sub-mappings as needed)."""
    for text in overrides or []:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return raw


def load_config(path: str | None, overrides: list[str] | None = None, raw: dict | None = None) -> Config:
    """Read a YAML config (or a raw dict), apply overrides, validate.

    Relative data paths in a config file resolve against the file's folder if the file exists
    there, else against the current directory (:func:`resolve_data_paths`); paths given as
    ``-o data.KEY=...`` overrides, and those of a raw dict, stay relative to the current directory.
    """
    source = os.fspath(path) if path else "config"
    if raw is None:
        if not path or not os.path.exists(path):
            raise MLIPError(f"{source}: config file not found")
        try:
            with open(path) as handle:
                raw = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            raise MLIPError(f"{source}: invalid YAML{line} ({getattr(err, 'problem', err)})") from None
        except OSError as err:
            raise MLIPError(f"{source}: cannot read ({err.strerror})") from None
    raw = dict(raw or {})
    raw = apply_overrides(raw, overrides or [])
    cfg = _build(Config, raw, "", source)
    _validate(cfg, source)
    if path:
        overridden = {parse_override(text)[0][-1] for text in overrides or [] if text.startswith("data.")}
        resolve_data_paths(cfg, os.path.dirname(os.fspath(path)), source, overridden)
    return cfg


# data.* entries that name files or folders: (key, must exist)
_DATA_PATHS = (("train_file", True), ("valid_file", True), ("test_file", True), ("preprocessed_dir", False))


def resolve_data_paths(cfg: Config, config_dir: str, source: str, skip: set[str] = frozenset()) -> None:
    """Relative data paths in a config file: the config file's folder if the file is there, else
    the current directory (as before, so repo-root-relative paths run from the repo root keep
    working). ``skip``: keys given on the command line (relative to the current directory).

    Raises:
        MLIPError: a data file found in neither folder (the message names both).
    """
    d = cfg.data
    items = list(_DATA_PATHS)
    if isinstance(d.e0s, str) and d.e0s not in ("auto", "fit", "zero"):
        items.append(("e0s", True))
    for key, must_exist in items:
        value = getattr(d, key)
        if not value or key in skip or os.path.isabs(value):
            continue
        beside = os.path.normpath(os.path.join(config_dir, value))
        if os.path.exists(beside):
            setattr(d, key, beside)
        elif must_exist and not os.path.exists(value):
            here = os.path.abspath(config_dir or ".")
            raise MLIPError(
                f"{source}: 'data.{key}' file '{value}' not found (looked in the config file's folder "
                f"{here} and in the current directory {os.getcwd()})"
            )


def config_from_dict(raw: dict) -> Config:
    """Rebuild a config stored in a checkpoint."""
    return _build(Config, raw, "", "checkpoint config")
