"""Loading a run configuration: defaults < a YAML file < `key=value` overrides.

Overrides are dotted keys with values parsed as YAML scalars (`train.lr=1e-4`,
`method.name=ms`, `method.params.alpha=2`). Merging refuses unknown sections and keys; every
other rule is checked once, by `RunConfig` (bench.config.models), when the merged dict is
validated. `method.params` and `dataset.options` are free-form here and checked by the methods
registry and the dataset loader.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dmlbench.bench.config.models import (SECTIONS, RunConfig, not_a_mapping, unknown_key,
                                          unknown_section)
from dmlbench.bench.errors import UserError

FREE_FORM = {("method", "params"), ("dataset", "options")}


def defaults() -> dict[str, Any]:
    """A fresh copy of the default config."""
    return RunConfig().to_dict()


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key=value (e.g. train.lr=1e-4)")
    key, _, raw = text.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"override {text!r} has an empty key; use e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        value = _number_or_str(value)
    return parts, value


def _number_or_str(s: str) -> Any:
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            return s


def _fix_numbers(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _fix_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_numbers(v) for v in obj]
    if isinstance(obj, str):
        n = _number_or_str(obj)
        return n if isinstance(n, float) and any(c in obj.lower() for c in "e.") else obj
    return obj


def merge(base: dict[str, Any], update: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base`; unknown sections/keys raise UserError."""
    out = copy.deepcopy(base)
    for sec, values in (update or {}).items():
        if sec not in SECTIONS:
            raise unknown_section(sec, prefix)
        if not isinstance(values, dict):
            raise not_a_mapping(sec, values, prefix)
        for key, value in values.items():
            if key not in SECTIONS[sec].model_fields:
                raise unknown_key(sec, key, prefix)
            if (sec, key) in FREE_FORM and isinstance(value, dict):
                out[sec][key] = {**out[sec].get(key, {}), **copy.deepcopy(value)}
            else:
                out[sec][key] = copy.deepcopy(value)
    return out


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings to a config dict (returns a new dict)."""
    out = copy.deepcopy(cfg)
    for text in overrides:
        parts, value = parse_override(text)
        if len(parts) == 2:
            out = merge(out, {parts[0]: {parts[1]: value}})
            out[parts[0]][parts[1]] = copy.deepcopy(value)  # `a.b={}` replaces, not merges
        elif len(parts) >= 3 and tuple(parts[:2]) in FREE_FORM:
            node = out[parts[0]].setdefault(parts[1], {})
            for p in parts[2:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        else:
            raise UserError(f"override key {'.'.join(parts)!r} must be section.key "
                            "(e.g. train.lr) or method.params.NAME / dataset.options.NAME")
    return out


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """The validated plain dict of `cfg` (missing keys take their defaults). Raises UserError
    on the first problem."""
    return RunConfig.from_dict(cfg).to_dict()


def load_config(path: "str | Path | None" = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """defaults (or `base`) < YAML file < overrides, validated, as the plain nested dict that
    the engine reads and fingerprints hash."""
    return load_run_config(path, overrides, base).to_dict()


def load_run_config(path: "str | Path | None" = None, overrides: list[str] | None = None,
                    base: dict[str, Any] | None = None) -> RunConfig:
    """defaults (or `base`) < YAML file < overrides, as a validated `RunConfig`."""
    cfg = copy.deepcopy(base) if base is not None else defaults()
    if path is not None:
        cfg = merge(cfg, read_yaml(path))
    cfg = apply_overrides(cfg, overrides or [])
    return RunConfig.from_dict(cfg)


def read_yaml(path: "str | Path") -> dict[str, Any]:
    """Parse a YAML mapping; errors become UserError lines."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file {str(p)!r} not found; check the path") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {str(p)!r} is not UTF-8 text (byte "
                        f"0x{e.object[e.start]:02x} at position {e.start}); save it as UTF-8"
                        ) from None
    except (OSError, yaml.YAMLError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read config file {str(p)!r}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must contain a mapping at the top level")
    return _fix_numbers(data)
