"""The typed configuration tree.

One dataclass per section; each field has a one-line doc (the comment on its line). Only builders
(``nvembed.modeling.builders``) read these objects; modules take explicit numbers (DESIGN.md §5 rules 2-3).

``from_dict`` rejects unknown keys with their dotted path, and ``apply_overrides`` takes the same dotted
``a.b=c`` strings that the CLI's ``--set`` and Tune search spaces use.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names its dotted path."""


@dataclass
class ModelConfig:
    """The backbone and how it is run."""

    name_or_path: str = "mistralai/Mistral-7B-v0.1"  # HF hub name or local folder (AutoModel)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16: backbone weights
    attn_implementation: str | None = "sdpa"  # eager | sdpa | flash_attention_2 | None (transformers default)
    bidirectional: bool = True  # remove the causal mask of decoder-only backbones (NV-Embed §3.1)
    max_length: int = 512  # token cap per text, specials included (NV-Embed trains at 512)
    instruction_template: str = "Instruct: {instruction}\nQuery: "  # query prefix (NV-Embed eq. 2)
    gradient_checkpointing: bool = False  # non-reentrant activation checkpointing in the backbone

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype must be auto|float32|bfloat16|float16, got {self.dtype!r}")
        if self.max_length < 4:
            raise ConfigError(f"model.max_length must be >= 4, got {self.max_length}")
        if "{instruction}" not in self.instruction_template:
            raise ConfigError("model.instruction_template must contain '{instruction}'")


@dataclass
class PoolingConfig:
    """How token states become one embedding (NV-Embed §3.2; ablations in Table 2)."""

    kind: str = "latent"  # latent | mean | last
    num_latents: int = 512  # r, rows of the latent array
    num_heads: int = 8  # h, cross-attention heads
    head_dim: int | None = None  # d_head; None = backbone hidden size (4096 for Mistral-7B, as released)
    ff_mult: int = 4  # GEGLU expansion
    normalize: bool = True  # L2-normalise the output
    zero_init_residual: bool = False  # start the latent block as identity (= mean pooling); see CALIBRATION.md

    def __post_init__(self) -> None:
        if self.kind not in ("latent", "mean", "last"):
            raise ConfigError(f"pooling.kind must be latent|mean|last, got {self.kind!r}")
        for name in ("num_latents", "num_heads", "ff_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pooling.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LoraConfig:
    """LoRA on the backbone through peft; the pooling head is always trained fully (spec pitfall 15)."""

    enabled: bool = False  # wrap the backbone with LoRA adapters
    rank: int = 16  # r
    alpha: int = 32  # scaling numerator (alpha / r)
    dropout: float = 0.1  # dropout on the adapter input
    target_modules: list[str] | str = "all-linear"  # peft target; "all-linear" = every Linear of the LLM

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class EmbedderConfig:
    """Everything needed to build an embedder: backbone, pooling, LoRA."""

    model: ModelConfig = field(default_factory=ModelConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


# --------------------------------------------------------------------------------------------- generic tree code


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check/convert a YAML value against a field type (dataclass, Optional, list, primitive)."""
    if _is_dataclass_type(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{path}: {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-5" as a string
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys raise :class:`ConfigError` naming their path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(
            f"unknown key {(path + '.' if path else '') + unknown[0]!r} in {where} (valid: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from err


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict view (what gets saved next to a run and shipped to Ray workers)."""
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[str, Any]:
    """``"lora.rank=32"`` -> ``("lora.rank", 32)``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(cfg: Any, overrides: dict[str, Any] | list[str]) -> Any:
    """Return a new config with dotted overrides applied and validated (shared by the CLI and Tune)."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown key {'.'.join(parts[: i + 1])!r} in override {dotted}={value!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"unknown key {dotted!r} in override {dotted}={value!r}")
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def load_yaml(path: str, cls: type, overrides: list[str] | None = None) -> Any:
    """Read a YAML file into ``cls`` and apply ``--set`` overrides; errors name the file."""
    with open(path, encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
    try:
        cfg = from_dict(cls, data)
        return apply_overrides(cfg, overrides or [])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
