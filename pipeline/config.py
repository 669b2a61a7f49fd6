"""Typed run configuration: dataclass defaults < YAML file < `key=value` overrides.

Each component declares its own Config dataclass next to its code (DataConfig in pipeline/sampler.py,
ModelConfig in pipeline/model.py, TrainConfig in pipeline/train.py, PredictConfig in pipeline/infer.py);
RunConfig composes them. Unknown keys and values of the wrong type are errors at load time, never
later in the run.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.infer import PredictConfig
from pipeline.model import ModelConfig
from pipeline.sampler import DataConfig
from pipeline.train import TrainConfig


class ConfigError(ValueError):
    """A config file or override that cannot be loaded; the message names the key."""


@dataclass(kw_only=True)
class RunConfig:
    run_dir: str = "runs/default"
    """Folder for checkpoints, logs and metrics; a restarted run resumes from the latest checkpoint here."""
    seed: int = 0
    """Seed for model init and data order; the data stream is a pure function of (seed, step)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        if self.model.seq_len != self.data.canvas * self.data.canvas:
            raise ConfigError(f"model.seq_len={self.model.seq_len} must equal data.canvas**2={self.data.canvas ** 2}")


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(f"unknown config key '{path}' (known: {', '.join(sorted(fields))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, path)
        else:
            if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if not _type_ok(value, tp):
                raise ConfigError(f"config key '{path}': expected {getattr(tp, '__name__', tp)}, got {value!r}")
            kwargs[key] = float(value) if tp is float else value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where or 'config'}: {e}") from e


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override '{dotted}': '{k}' is not a section")
    d[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_path(out, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections")
    return data


def load_config(path: str | Path | list | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> RunConfig:
    """Load YAML presets (each holding only its deltas, applied in order: e.g. a TTT recipe, then
    configs/ttt_fast.yaml) and apply `key=value` overrides. The deltas apply to the dataclass defaults, or to
    `base` (a resolved config as a dict, e.g. a checkpoint's, for test-time training)."""
    data = dict(base or {})
    for preset in [] if path is None else (path if isinstance(path, (list, tuple)) else [path]):
        data = _merge(data, read_yaml(preset))
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(RunConfig, data)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
