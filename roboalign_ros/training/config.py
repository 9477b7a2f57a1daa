"""Stage configs: dataclasses with documented defaults, loaded from YAML with ``--set`` overrides.

Every stage config is a dataclass; :func:`load_config` builds one from a YAML file (or a dict)
plus ``key=value`` overrides (dotted keys reach nested dataclasses, values are parsed as YAML).
Unknown keys, wrong types and bad values raise :class:`ConfigError` (a ``ValueError``) whose
message names the field, e.g. ``sft.lambda_reasoning: must be >= 0, got -1``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A stage config is invalid (the message names the field)."""


def _fail(prefix: str, name: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"{prefix}.{name}: {msg}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (int->float widening, tuples from lists)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {value!r} matches none of {hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(hint, value, where, run_validate=False)  # the parent validates
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls, data: dict, prefix: str | None = None, run_validate: bool = True):
    """Build dataclass ``cls`` from ``data``; unknown keys and bad types raise ConfigError."""
    prefix = prefix or getattr(cls, "section", cls.__name__)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of options, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{prefix}: unknown option(s) {unknown}; valid options: "
                          f"{sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if run_validate and validate is not None:
        validate()
    return obj


def to_dict(cfg) -> dict:
    """Plain (YAML-ready) dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def parse_overrides(pairs) -> dict:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ConfigError(f"override {pair!r}: expected key=value")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {pair!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {pair!r}: bad value ({exc})") from exc
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {p} is not a section")
        node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls, source=None, overrides=()):
    """Build stage config ``cls`` from a YAML path / dict / instance (None = defaults).

    ``overrides`` are ``key=value`` strings applied on top (dotted keys for nested sections).
    """
    if isinstance(source, cls):
        data = to_dict(source)
    elif source is None:
        data = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        # allow a top-level section named after the stage (``sft: {...}``)
        section = getattr(cls, "section", None)
        if section and set(data) == {section}:
            data = data[section]
    data = _merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def check(prefix: str, name: str, ok: bool, msg: str, value) -> None:
    """Raise ConfigError ``prefix.name: msg, got value`` unless ``ok``."""
    if not ok:
        _fail(prefix, name, f"{msg}, got {value!r}")


# ---------------------------------------------------------------------------- shared sections
@dataclasses.dataclass
class DataConfig:
    """Which dataset(s) a stage reads.

    Fields:
        roots: one or more LeRobot v3 dataset directories (``DatasetWriter`` layout).
        episodes: restrict to these episode indices (applied to every root); empty = all.
        frame_stride: use every N-th frame of each episode.
        max_samples: cap on the number of (episode, frame) samples after striding (0 = all),
            taken evenly over the data (used by ``align``, which needs a small fraction).
        val_fraction: fraction of episodes (per root, the last ones) held out for evaluation.
        episode_cache: decoded episodes kept in memory by the frame loader.
        num_workers: DataLoader worker processes (0 = load in the training process).
    """

    roots: list[str] = dataclasses.field(default_factory=list)
    episodes: list[int] = dataclasses.field(default_factory=list)
    frame_stride: int = 1
    max_samples: int = 0
    val_fraction: float = 0.0
    episode_cache: int = 8
    num_workers: int = 0

    def validate(self, prefix: str = "data") -> None:
        """Raise ConfigError naming the first bad field."""
        check(prefix, "roots", len(self.roots) >= 1, "needs at least one dataset directory",
              self.roots)
        check(prefix, "frame_stride", self.frame_stride >= 1, "must be >= 1", self.frame_stride)
        check(prefix, "max_samples", self.max_samples >= 0, "must be >= 0", self.max_samples)
        check(prefix, "val_fraction", 0.0 <= self.val_fraction < 1.0, "must be in [0, 1)",
              self.val_fraction)
        check(prefix, "episode_cache", self.episode_cache >= 1, "must be >= 1",
              self.episode_cache)
        check(prefix, "num_workers", self.num_workers >= 0, "must be >= 0", self.num_workers)


@dataclasses.dataclass
class RunConfig:
    """Options every training stage shares.

    Fields:
        output_dir: where checkpoints (``checkpoint-<step>/``), TensorBoard logs (``tb/``)
            and the final policy (``policy/``, the ``VLAPolicy.save_pretrained`` layout) go.
        seed: seeds Python, NumPy and torch (results are deterministic on CPU).
        resume: "auto" (continue from the newest ``checkpoint-*`` in output_dir if any),
            "never", or a checkpoint directory.
        save_every: optimizer steps between checkpoints (0 = only at the end).
        keep_checkpoints: newest checkpoints kept (0 = keep all).
        log_every: optimizer steps between log lines / TensorBoard points.
        mixed_precision: accelerate's "no", "bf16" or "fp16" (fp32 on CPU regardless).
        progress: show tqdm progress bars.
    """

    output_dir: str = "runs/stage"
    seed: int = 0
    resume: str = "auto"
    save_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    mixed_precision: str = "no"
    progress: bool = True

    def validate(self, prefix: str = "run") -> None:
        """Raise ConfigError naming the first bad field."""
        check(prefix, "output_dir", bool(self.output_dir), "must be set", self.output_dir)
        check(prefix, "save_every", self.save_every >= 0, "must be >= 0", self.save_every)
        check(prefix, "keep_checkpoints", self.keep_checkpoints >= 0, "must be >= 0",
              self.keep_checkpoints)
        check(prefix, "log_every", self.log_every >= 1, "must be >= 1", self.log_every)
        check(prefix, "mixed_precision", self.mixed_precision in ("no", "bf16", "fp16"),
              "must be 'no', 'bf16' or 'fp16'", self.mixed_precision)
