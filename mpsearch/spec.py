"""Study specs: TOML files validated into typed, versioned dataclasses.

Every error names the file, the key and what would be valid, in one line. A spec
converts to a plain dict (:meth:`StudySpec.to_dict`) that is stored with the
study, so ``mpsearch study run NAME`` needs only the storage.

Example::

    [study]
    name = "quickstart"
    objectives = ["accuracy", "bitops"]
    sampler = "tpe"
    n_trials = 12
    [model]
    name = "lenet5"
    [data]
    name = "mnist-mini"
    [[strategy]]
    name = "uniform"
    space.bits = [2, 3, 4, 8]
    [resources]
    cpus_per_trial = 1
    max_concurrent = 2

``plugins = ["my_plugin.py", "my_package.plugin"]`` (top level) names plugin files
(paths relative to the spec) and modules the study needs. ``mpsearch study create``
loads them, and the study records every plugin it was checked with, each file as
an absolute path with the sha256 of its content (``/abs/my_plugin.py#sha256=…``).
Reading a study (``list``, ``show``, ``export``, ``plot``) never imports them.
``mpsearch study run`` loads only installed plugins and ``--plugin`` files, and the
recorded ones only with ``--trust-spec-plugins``, each only if its content still
has the recorded sha256.

``[study] storage`` may be a URL with a password; the dict a spec is stored as
(:meth:`StudySpec.to_dict`) never holds it.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mpsearch.errors import MpsearchError
from mpsearch.storage_url import url_without_password

SPEC_VERSION = 1
SAMPLERS = ("tpe", "nsga2", "nsga3", "random", "gp")
DIRECTIONS = ("maximize", "minimize")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
COMPILE = ("auto", "on", "off")
AUTOCAST = ("auto", "bf16", "off")
AUGMENT = ("default", "none", "crop-flip", "resized-crop-flip")
# "sampler": Optuna chooses the strategy like any parameter; "round-robin": trial n runs
# strategy n mod k, so every strategy gets its share of the trials (method comparisons).
STRATEGY_CHOICES = ("sampler", "round-robin")
ACCURACY = "accuracy"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_NAME = 100  # a study name names a folder and files: well below a file system's 255 bytes
MAX_SEED = 2**32 - 1  # the samplers seed NumPy, which takes 32 bits


def check_study_name(name: object, where: str = "[study] name") -> str:
    """Return ``name`` if it is a valid study name: letters, digits, ``_ . -``, at most
    :data:`MAX_NAME` characters, not starting with a dot or a dash.

    Raises:
        SpecError: otherwise (a name read back from a database is checked too: it
            names folders and files, and must never lead out of them).
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SpecError(f"{where} {name!r} may use only letters, digits, _ . - "
                        f"(starting with a letter or digit).")
    if len(name) > MAX_NAME:
        raise SpecError(f"{where} is {len(name)} characters long; at most {MAX_NAME}.")
    return name


class SpecError(MpsearchError):
    """A study spec that cannot be used, with the key and what would be valid."""


@dataclass(frozen=True)
class Param:
    """One hyperparameter's search space: choices, a range, or a fixed value."""

    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    value: Any = None

    @property
    def fixed(self) -> bool:
        return self.choices is None and self.low is None

    def values(self) -> list[Any]:
        """Every value the space can take (both ends of a range), to validate them."""
        if self.fixed:
            return [self.value]
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]

    def to_dict(self) -> Any:
        if self.fixed:
            return self.value
        if self.choices is not None:
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    @classmethod
    def parse(cls, raw: Any, where: str) -> Param:
        """``[a, b, c]`` choices, ``{low, high, log, step}`` a range, a scalar a fixed value."""
        if isinstance(raw, list):
            if not raw:
                raise SpecError(f"{where}: the list of choices is empty.")
            if any(isinstance(v, (list, dict)) for v in raw):
                raise SpecError(f"{where}: choices must be numbers, strings or booleans.")
            return cls(choices=tuple(raw))
        if isinstance(raw, dict):
            unknown = set(raw) - {"low", "high", "log", "step"}
            if unknown:
                raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                f"a range takes low, high, log, step.")
            if "low" not in raw or "high" not in raw:
                raise SpecError(f"{where}: a range needs both low and high.")
            low, high = raw["low"], raw["high"]
            for k, v in (("low", low), ("high", high)):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise SpecError(f"{where}.{k} must be a number, not {v!r}.")
            if not low < high:
                raise SpecError(f"{where}: low ({low}) must be below high ({high}).")
            log = raw.get("log", False)
            if not isinstance(log, bool):
                raise SpecError(f"{where}.log must be true or false, not {log!r}.")
            if log and low <= 0:
                raise SpecError(f"{where}: a log-scale range needs low > 0.")
            step = raw.get("step")
            if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                                     or step <= 0):
                raise SpecError(f"{where}.step must be a positive number, not {step!r}.")
            integer = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
            return cls(low=low, high=high, log=log, step=step, integer=integer)
        if isinstance(raw, (bool, int, float, str)):
            return cls(value=raw)
        raise SpecError(f"{where}: expected a list of choices, a {{low, high}} range or a value, "
                        f"not {raw!r}.")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str


@dataclass(frozen=True)
class StudySection:
    name: str
    objectives: tuple[Objective, ...]
    n_trials: int
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None
    strategy_choice: str = "sampler"


@dataclass(frozen=True)
class ModelSection:
    """The network, and the trained float weights its trials start from (if any).

    Attributes:
        weights: a state dict saved with ``torch.save(model.state_dict(), path)``
            (an absolute path once parsed; relative paths in a spec file are relative
            to the spec's folder).
        weights_sha256: the file's digest, stored when the study is created (a spec
            may give it to pin the file); a changed file is refused.
    """

    name: str
    weights: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class DataSection:
    """The dataset, its hold-out, and how it is read.

    Attributes:
        streaming: ``true`` decodes image files batch by batch from disk, ``false``
            holds each split in memory, ``"auto"`` streams splits too large for memory
            (see :func:`mpsearch.data.open_split`).
        workers: decoding processes when streaming (default: one per trial CPU, up to 8).
    """

    name: str
    root: str | None = None
    validation_fraction: float = 0.1
    train_subset: int | None = None
    augment: str | None = "default"
    options: dict = field(default_factory=dict)
    streaming: bool | str = "auto"
    workers: int | None = None


@dataclass(frozen=True)
class TrainingSection:
    """Training of the study's float start and of every trial.

    Attributes:
        epochs: each trial's own budget (search plus fine-tuning) on top of the float
            start; 0 is post-training quantization (calibration only).
        pretrain_epochs: float training of the study's start, once per study, before
            its first trial (from ``[model] weights`` if given, else the seeded init).
        pretrain_lr, pretrain_optimizer: for that training (default: ``lr``, ``optimizer``).
        calibration_images: training images that calibrate quantizer ranges when
            nothing trains (``epochs = 0``, candidates scored without fine-tuning).
        autocast: ``"auto"`` trains and evaluates under bf16 autocast on CUDA and in
            float32 on the CPU; ``"bf16"`` asks for it, ``"off"`` stays float32.
    """

    epochs: int = 2
    pretrain_epochs: int = 0
    pretrain_lr: float | None = None
    pretrain_optimizer: str | None = None
    calibration_images: int = 512
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    device: str = "auto"
    compile: str = "auto"
    autocast: str = "auto"


@dataclass(frozen=True)
class StrategySection:
    name: str
    space: dict[str, Param] = field(default_factory=dict)
    # Points of the space run first, e.g. the uniform 4-bit baseline a front is read against.
    enqueue: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class ResourcesSection:
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int = 1
    executor: str = "ray"
    checkpoint: bool = True  # per-epoch checkpoints, so a restarted trial resumes
    max_retries: int = 2  # times Ray restarts a trial whose worker or node died


@dataclass(frozen=True)
class StudySpec:
    study: StudySection
    model: ModelSection
    data: DataSection
    training: TrainingSection
    strategies: tuple[StrategySection, ...]
    resources: ResourcesSection
    backend: str = "generic"
    plugins: tuple[str, ...] = ()
    source: str = "spec"

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def has_float_start(self) -> bool:
        """Whether trials start from a trained float model (weights given, or pretrained in the study)."""
        return self.model.weights is not None or self.training.pretrain_epochs > 0

    @property
    def cost_objectives(self) -> list[str]:
        return [o.name for o in self.study.objectives if o.name != ACCURACY]

    def strategy(self, name: str) -> StrategySection:
        for s in self.strategies:
            if s.name == name:
                return s
        raise SpecError(f"{self.source}: strategy {name!r} is not in the spec.")

    def to_dict(self) -> dict[str, Any]:
        """A plain, TOML-shaped dict that :func:`parse_spec` reads back to an equal spec."""
        study = asdict(self.study)
        study["objectives"] = [{"name": o.name, "direction": o.direction}
                               for o in self.study.objectives]
        if study["storage"] is None:
            del study["storage"]
        else:  # the dict is stored, checkpointed and handed to Ray: never with a password
            study["storage"] = url_without_password(study["storage"])
        data = {k: v for k, v in asdict(self.data).items() if v is not None}
        return {
            "version": SPEC_VERSION,
            "study": study,
            "model": {k: v for k, v in asdict(self.model).items() if v is not None},
            "data": data,
            "training": {k: v for k, v in asdict(self.training).items() if v is not None},
            "backend": {"name": self.backend},
            "strategy": [{"name": s.name, "space": {k: p.to_dict() for k, p in s.space.items()},
                          **({"enqueue": [dict(e) for e in s.enqueue]} if s.enqueue else {})}
                         for s in self.strategies],
            "resources": asdict(self.resources),
            "plugins": list(self.plugins),
        }


def check_integer_params(merged: Mapping[str, Param], where: str,
                         rules: Sequence[tuple[str, int, int | None]]) -> None:
    """Check a strategy's integer parameters, and that every ``min_bits`` is at most every ``max_bits``.

    Args:
        merged: the strategy's parameters (defaults with the spec's space over them).
        where: the spec location for messages, e.g. ``"spec: strategy[2].space"``.
        rules: ``(name, lowest, highest)`` per integer parameter; ``highest`` None is unbounded.
            The ``min_bits``/``max_bits`` order is checked where both are parameters.

    Raises:
        SpecError: one line naming the parameter and the valid values.
    """
    for name, lowest, highest in rules:
        p = merged[name]
        if p.low is not None and not p.integer:
            raise SpecError(f"{where}.{name}: a range needs integer low and high.")
        for v in p.values():
            if (isinstance(v, bool) or not isinstance(v, int) or v < lowest
                    or (highest is not None and v > highest)):
                valid = f"{lowest}-{highest}" if highest else f"of at least {lowest}"
                raise SpecError(f"{where}.{name}: {v!r} must be an integer {valid}.")
    if "min_bits" in merged and "max_bits" in merged:
        if max(merged["min_bits"].values()) > min(merged["max_bits"].values()):
            raise SpecError(f"{where}: min_bits can exceed max_bits; every min_bits must be at most "
                            f"every max_bits.")


def load_spec(path: str | Path, host=None) -> StudySpec:
    """Read and validate a TOML spec.

    Args:
        host: a :class:`~mpsearch.host.PluginHost` to check plugin names against
            (strategies, objectives, backend, model, dataset); skipped when None.

    Raises:
        SpecError: the file is missing, not TOML, or invalid (one line, naming the key).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"study spec {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"study spec {str(path)!r} is not readable: {exc}.") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}.") from exc
    return parse_spec(raw, source=str(path), host=host, base=path.parent)


def parse_spec(raw: Mapping[str, Any], source: str = "spec", host=None,
               base: Path | None = None) -> StudySpec:
    """Validate a TOML-shaped mapping into a :class:`StudySpec` (see :func:`load_spec`).

    The sections are read in a fixed order (the first bad key is the one reported).

    Args:
        base: the folder relative paths in the spec (``[model] weights``) are relative
            to (the spec file's); None: the working directory.
    """
    r = _Reader(source)
    _check_top_level(r, raw)
    study = _study_section(r, r.table(raw, "study"), host)
    model = _model_section(r, r.table(raw, "model"), host, base)
    data = _data_section(r, r.table(raw, "data"), host)
    training = _training_section(r, raw.get("training", {}))
    backend = _backend_name(r, raw.get("backend", {"name": "generic"}), host)
    strategies = _strategy_sections(r, raw.get("strategy"), host)
    _check_post_training(r, training, strategies, host)
    resources = _resources_section(r, raw.get("resources", {}), host)
    plugins = _plugin_list(r, raw.get("plugins", []))
    return StudySpec(study=study, model=model, data=data, training=training,
                     strategies=strategies, resources=resources, backend=backend,
                     plugins=plugins, source=source)


def _check_top_level(r: _Reader, raw: Mapping[str, Any]) -> None:
    """The top-level keys, and the spec version this mpsearch reads."""
    r.keys(raw, "", {"version", "study", "model", "data", "training", "backend", "strategy",
                     "resources", "plugins"}, required={"study", "model", "data", "strategy"})
    version = raw.get("version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError(f"{r.source}: spec version {version!r} is not supported; "
                        f"this mpsearch reads version {SPEC_VERSION}.")


def _study_section(r: _Reader, s: Mapping[str, Any], host) -> StudySection:
    """``[study]``: name, objectives, budget, sampler, seed, storage."""
    r.keys(s, "study", {"name", "objectives", "sampler", "n_trials", "seed", "storage",
                        "strategy_choice"},
           required={"name", "objectives", "n_trials"})
    name = check_study_name(r.string(s, "study", "name"), f"{r.source}: [study] name")
    objectives = _objectives(r, s.get("objectives"), host)
    return StudySection(
        name=name, objectives=objectives, n_trials=r.integer(s, "study", "n_trials", low=1),
        sampler=r.choice(s, "study", "sampler", SAMPLERS, "tpe"),
        seed=r.integer(s, "study", "seed", low=0, default=0, high=MAX_SEED),
        storage=r.string(s, "study", "storage", default=None),
        strategy_choice=r.choice(s, "study", "strategy_choice", STRATEGY_CHOICES, "sampler"))


def _model_section(r: _Reader, m: Mapping[str, Any], host, base: Path | None) -> ModelSection:
    """``[model]``: the network's name, and its float weights as an absolute path (with a digest)."""
    r.keys(m, "model", {"name", "weights", "weights_sha256"}, required={"name"})
    weights = r.string(m, "model", "weights", default=None)
    if weights is not None:
        weights = str((Path(base or ".") / Path(weights).expanduser()).resolve())
    digest = r.string(m, "model", "weights_sha256", default=None)
    if digest is not None and not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise SpecError(f"{r.source}: [model] weights_sha256 must be 64 lower-case hex digits, "
                        f"not {digest!r}.")
    if digest is not None and weights is None:
        raise SpecError(f"{r.source}: [model] weights_sha256 is given without weights.")
    return ModelSection(name=r.plugin(m, "model", "name", host, "models"), weights=weights,
                        weights_sha256=digest)


def _data_section(r: _Reader, d: Mapping[str, Any], host) -> DataSection:
    """``[data]``: the dataset, its hold-out, augmentation and how it is read."""
    r.keys(d, "data", {"name", "root", "validation_fraction", "train_subset", "augment", "options",
                       "streaming", "workers"}, required={"name"})
    fraction = r.number(d, "data", "validation_fraction", default=0.1)
    if not 0 < fraction < 1:
        raise SpecError(f"{r.source}: [data] validation_fraction must lie strictly between 0 and 1, "
                        f"not {fraction}.")
    augment = d.get("augment", "default")
    if augment is not None and augment not in AUGMENT:
        raise SpecError(f"{r.source}: [data] augment must be one of {', '.join(AUGMENT)}, "
                        f"not {augment!r}.")
    streaming = d.get("streaming", "auto")
    if not (isinstance(streaming, bool) or streaming == "auto"):
        raise SpecError(f"{r.source}: [data] streaming must be true, false or \"auto\", "
                        f"not {streaming!r}.")
    options = d.get("options", {})
    if not isinstance(options, dict):
        raise SpecError(f"{r.source}: [data] options must be a table, not {options!r}.")
    return DataSection(
        name=r.plugin(d, "data", "name", host, "datasets"),
        root=r.string(d, "data", "root", default=None), validation_fraction=fraction,
        train_subset=r.integer(d, "data", "train_subset", low=1, default=None),
        augment=augment, options=dict(options), streaming=streaming,
        workers=r.integer(d, "data", "workers", low=0, default=None))


def _training_section(r: _Reader, t: Any) -> TrainingSection:
    """``[training]`` (optional): every key defaults to :class:`TrainingSection`'s."""
    r.is_table(t, "training")
    defaults = TrainingSection()
    r.keys(t, "training", set(asdict(defaults)))
    return TrainingSection(
        epochs=r.integer(t, "training", "epochs", low=0, default=defaults.epochs),
        pretrain_epochs=r.integer(t, "training", "pretrain_epochs", low=0,
                                  default=defaults.pretrain_epochs),
        pretrain_lr=(r.number(t, "training", "pretrain_lr", default=None, positive=True)
                     if "pretrain_lr" in t else None),
        pretrain_optimizer=(r.choice(t, "training", "pretrain_optimizer", OPTIMIZERS, None)
                            if "pretrain_optimizer" in t else None),
        calibration_images=r.integer(t, "training", "calibration_images", low=1,
                                     default=defaults.calibration_images),
        batch_size=r.integer(t, "training", "batch_size", low=1, default=defaults.batch_size),
        optimizer=r.choice(t, "training", "optimizer", OPTIMIZERS, defaults.optimizer),
        lr=r.number(t, "training", "lr", default=defaults.lr, positive=True),
        momentum=r.number(t, "training", "momentum", default=defaults.momentum),
        weight_decay=r.number(t, "training", "weight_decay", default=defaults.weight_decay),
        schedule=r.choice(t, "training", "schedule", SCHEDULES, defaults.schedule),
        device=r.choice(t, "training", "device", DEVICES, defaults.device),
        compile=r.choice(t, "training", "compile", COMPILE, defaults.compile),
        autocast=r.choice(t, "training", "autocast", AUTOCAST, defaults.autocast))


def _backend_name(r: _Reader, b: Any, host) -> str:
    """``[backend] name``, or the short form ``backend = "loom"``."""
    if isinstance(b, str):  # backend = "loom" is short for [backend] name = "loom"
        b = {"name": b}
    r.is_table(b, "backend")
    r.keys(b, "backend", {"name"}, required={"name"})
    return r.plugin(b, "backend", "name", host, "backends")


def _strategy_sections(r: _Reader, raw: Any, host) -> tuple[StrategySection, ...]:
    """``[[strategy]]``: at least one, each name once."""
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{r.source}: [[strategy]] must be given at least once "
                        f"(an array of tables, each with a name).")
    strategies: list[StrategySection] = []
    for i, st in enumerate(raw):
        strategies.append(_strategy_section(r, st, f"strategy[{i}]", host, strategies))
    return tuple(strategies)


def _strategy_section(r: _Reader, st: Any, where: str, host,
                      earlier: Sequence[StrategySection]) -> StrategySection:
    """One ``[[strategy]]`` table: its name, search space and enqueued points."""
    r.is_table(st, where)
    r.keys(st, where, {"name", "space", "enqueue"}, required={"name"})
    sname = r.plugin(st, where, "name", host, "strategies")
    if any(x.name == sname for x in earlier):
        raise SpecError(f"{r.source}: strategy {sname!r} is listed twice; list each once.")
    space_raw = st.get("space", {})
    r.is_table(space_raw, f"{where}.space")
    space = {k: Param.parse(v, f"{r.source}: {where}.space.{k}") for k, v in space_raw.items()}
    if host is not None and sname in host.strategies:
        host.strategies.get(sname).check_space(space, f"{r.source}: {where}.space")
    enqueue = _enqueued_points(st.get("enqueue", []), space, host, sname, f"{r.source}: {where}")
    return StrategySection(name=sname, space=space, enqueue=enqueue)


def _check_post_training(r: _Reader, training: TrainingSection,
                         strategies: Sequence[StrategySection], host) -> None:
    """``[training] epochs = 0`` only with strategies that can quantize without training."""
    if training.epochs == 0 and host is not None:
        for st in strategies:
            if st.name in host.strategies and not host.strategies.get(st.name).post_training:
                raise SpecError(f"{r.source}: [training] epochs = 0 is post-training quantization, which "
                                f"strategy {st.name!r} cannot do (it learns by training); give epochs "
                                f">= 1 or drop it.")


def _resources_section(r: _Reader, res: Any, host) -> ResourcesSection:
    """``[resources]`` (optional): what each trial gets, how many run at once, and where."""
    r.is_table(res, "resources")
    dres = ResourcesSection()
    r.keys(res, "resources", set(asdict(dres)))
    return ResourcesSection(
        cpus_per_trial=r.number(res, "resources", "cpus_per_trial", default=dres.cpus_per_trial,
                                positive=True),
        gpus_per_trial=_gpus(r, res, dres.gpus_per_trial),
        max_concurrent=r.integer(res, "resources", "max_concurrent", low=1,
                                 default=dres.max_concurrent),
        executor=_executor_name(r, res, dres.executor, host),
        checkpoint=r.boolean(res, "resources", "checkpoint", dres.checkpoint),
        max_retries=r.integer(res, "resources", "max_retries", default=dres.max_retries))


def _executor_name(r: _Reader, res: Mapping[str, Any], default: str, host) -> str:
    """``[resources] executor``: any name a plugin registered (checked where a host is given;
    a Ray worker parses the stored spec without one)."""
    name = r.string(res, "resources", "executor", default)
    if host is not None:
        _known(r.source, "[resources] executor", name, host, "executors")
    return name


def _plugin_list(r: _Reader, plugins: Any) -> tuple[str, ...]:
    """Top-level ``plugins``: module names or ``.py`` paths the study needs."""
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise SpecError(f"{r.source}: plugins must be a list of module names or .py paths.")
    return tuple(plugins)


def _gpus(r: _Reader, res: Mapping[str, Any], default: float) -> float:
    """``gpus_per_trial``: a share of one GPU (several trials on it) or whole GPUs, as Ray places them."""
    gpus = r.number(res, "resources", "gpus_per_trial", default=default)
    if gpus > 1 and gpus != int(gpus):
        raise r.fail("resources", "gpus_per_trial", f"must be a fraction of one GPU (0.25: four "
                     f"trials share it) or a whole number of GPUs, not {gpus!r}.")
    return gpus


def _objectives(r: _Reader, raw: Any, host) -> tuple[Objective, ...]:
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{r.source}: [study] objectives must be a non-empty list such as "
                        f"[\"accuracy\", \"bitops\"].")
    out: list[Objective] = []
    for i, item in enumerate(raw):
        where = f"[study] objectives[{i}]"
        if isinstance(item, str):
            name, direction = item, None
        elif isinstance(item, dict):
            r.keys(item, f"study.objectives[{i}]", {"name", "direction"}, required={"name"})
            name, direction = item["name"], item.get("direction")
        else:
            raise SpecError(f"{r.source}: {where} must be a name or {{name, direction}}, not {item!r}.")
        if not isinstance(name, str):
            raise SpecError(f"{r.source}: {where} name must be a string, not {name!r}.")
        if name != ACCURACY and host is not None:
            _known(r.source, where, name, host, "objectives")
        default = "maximize" if name == ACCURACY else (
            host.objectives.get(name).direction if host is not None else "minimize")
        direction = direction or default
        if direction not in DIRECTIONS:
            raise SpecError(f"{r.source}: {where} direction must be maximize or minimize, "
                            f"not {direction!r}.")
        if any(o.name == name for o in out):
            raise SpecError(f"{r.source}: objective {name!r} is listed twice.")
        out.append(Objective(name, direction))
    if ACCURACY not in [o.name for o in out]:
        raise SpecError(f"{r.source}: [study] objectives must include \"accuracy\" "
                        f"(validation accuracy, what the front trades cost against).")
    if len(out) < 2:
        raise SpecError(f"{r.source}: [study] objectives need at least one cost beside accuracy, "
                        f"e.g. \"bitops\", \"size\" or \"memory\".")
    return tuple(out)


def _known(source: str, where: str, name: str, host, kind: str) -> None:
    from mpsearch.errors import UnknownNameError

    try:
        getattr(host, kind).entry(name)
    except UnknownNameError as exc:
        raise SpecError(f"{source}: {where}: {exc}") from None


def _enqueued_points(raw: Any, space: dict[str, Param], host, sname: str,
                     where: str) -> tuple[dict[str, Any], ...]:
    """``enqueue = [{bits = 4}, ...]``: points of the strategy's space that run first.

    Each names drawn (not fixed) hyperparameters with a value the space can take;
    the others are drawn as usual.
    """
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise SpecError(f"{where}.enqueue: give a list of tables, e.g. enqueue = [{{bits = 4}}].")
    known = host is not None and sname in host.strategies
    merged = {**host.strategies.get(sname).parameters, **space} if known else dict(space)
    points = []
    for i, point in enumerate(raw):
        at = f"{where}.enqueue[{i}]"
        if not point:
            raise SpecError(f"{at}: the table is empty; name the hyperparameters to fix.")
        for k, v in point.items():
            p = merged.get(k)
            if p is None and not known:  # checked where the strategy's plugin is loaded
                continue
            if p is None:
                raise SpecError(f"{at}.{k}: not a hyperparameter of strategy {sname!r}"
                                + (f"; valid: {', '.join(sorted(merged))}." if merged else "."))
            if p.fixed:
                raise SpecError(f"{at}.{k}: fixed at {p.value!r} in this space, so it is never "
                                f"drawn; give it a list of choices or a range to enqueue {v!r}.")
            if p.choices is not None:
                if not any(c == v and type(c) is type(v) for c in p.choices):  # True is not 1
                    raise SpecError(f"{at}.{k}: {v!r} is not one of the choices "
                                    f"{list(p.choices)}.")
            elif (isinstance(v, bool) or not isinstance(v, (int, float))
                  or (p.integer and not isinstance(v, int)) or not p.low <= v <= p.high):
                raise SpecError(f"{at}.{k}: {v!r} is outside the range {p.low}-{p.high}"
                                + (" (integers)." if p.integer else "."))
        points.append(dict(point))
    return tuple(points)


class _Reader:
    """Typed access to a TOML table with errors that name the key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, section: str, key: str, message: str) -> SpecError:
        where = f"[{section}] {key}" if section else key
        return SpecError(f"{self.source}: {where} {message}")

    def is_table(self, value: Any, section: str) -> None:
        if not isinstance(value, dict):
            raise SpecError(f"{self.source}: [{section}] must be a table, not {value!r}.")

    def table(self, raw: Mapping, key: str) -> dict:
        value = raw.get(key)
        self.is_table(value, key)
        return value

    def keys(self, table: Mapping, section: str, allowed: set[str], required: set[str] = frozenset()):
        unknown = sorted(set(table) - allowed)
        if unknown:
            where = f"[{section}]" if section else "the top level"
            close = difflib.get_close_matches(unknown[0], sorted(allowed), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{self.source}: unknown key(s) {', '.join(unknown)} in {where};{hint} "
                            f"valid keys: {', '.join(sorted(allowed))}.")
        missing = sorted(required - set(table))
        if missing:
            where = f"[{section}]" if section else "the top level"
            raise SpecError(f"{self.source}: {where} is missing {', '.join(missing)}.")

    def string(self, t: Mapping, section: str, key: str, default: Any = ...) -> Any:
        if key not in t:
            if default is ...:
                raise self.fail(section, key, "is required.")
            return default
        if not isinstance(t[key], str) or not t[key]:
            raise self.fail(section, key, f"must be a non-empty string, not {t[key]!r}.")
        return t[key]

    def integer(self, t: Mapping, section: str, key: str, low: int = 0, default: Any = ...,
                high: int | None = None) -> Any:
        if key not in t:
            if default is ...:
                raise self.fail(section, key, "is required.")
            return default
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise self.fail(section, key, f"must be an integer >= {low}, not {v!r}.")
        if high is not None and v > high:
            raise self.fail(section, key, f"must be an integer from {low} to {high}, not {v!r}.")
        return v

    def boolean(self, t: Mapping, section: str, key: str, default: bool) -> bool:
        v = t.get(key, default)
        if not isinstance(v, bool):
            raise self.fail(section, key, f"must be true or false, not {v!r}.")
        return v

    def number(self, t: Mapping, section: str, key: str, default: float, positive: bool = False):
        v = t.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                or (positive and v == 0):
            kind = "a positive number" if positive else "a non-negative number"
            raise self.fail(section, key, f"must be {kind}, not {v!r}.")
        return v

    def choice(self, t: Mapping, section: str, key: str, choices: tuple[str, ...], default: str):
        v = t.get(key, default)
        if v not in choices:
            raise self.fail(section, key, f"must be one of {', '.join(choices)}, not {v!r}.")
        return v

    def plugin(self, t: Mapping, section: str, key: str, host, kind: str) -> str:
        name = self.string(t, section, key)
        if host is not None:
            _known(self.source, f"[{section}] {key}", name, host, kind)
        return name
