"""Run configuration: a nested dict validated once, at load, against a schema.

Sources, later ones winning: the defaults below < a YAML file < `key=value` overrides
(dotted keys, values parsed as YAML scalars: `train.lr=1e-4`, `method.name=ms`,
`method.params.alpha=2`). Every problem raises UserError naming the key, the value and
what is allowed. `method.params` is free-form here and checked by the methods registry.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import yaml

from dmlbench.bench.errors import UserError

# key -> (default, checker). A checker returns None if fine, else the text "what is allowed".
Check = Callable[[Any], "str | None"]


def _num(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
         open_lo: bool = False, none_ok: bool = False) -> Check:
    def check(v: Any) -> str | None:
        kind = "an integer" if integer else "a number"
        rng = ""
        if lo is not None:
            rng += f" {'>' if open_lo else '>='} {lo}"
        if hi is not None:
            rng += f"{' and' if rng else ''} <= {hi}"
        allowed = f"{kind}{rng}" + (" or null" if none_ok else "")
        if v is None:
            return None if none_ok else allowed
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return allowed
        if integer and not float(v).is_integer():
            return allowed
        if lo is not None and (v <= lo if open_lo else v < lo):
            return allowed
        if hi is not None and v > hi:
            return allowed
        return None
    return check


def _choice(*options: Any, none_ok: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and none_ok:
            return None
        return None if v in options else "one of " + ", ".join(map(str, options))
    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _str(none_ok: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and none_ok:
            return None
        return None if isinstance(v, str) and v else "a non-empty string"
    return check


def _int_list(v: Any) -> str | None:
    ok = isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool)
                                               and x > 0 for x in v)
    return None if ok else "a list of positive integers, e.g. [1, 2, 4, 8]"


def _dict(v: Any) -> str | None:
    return None if isinstance(v, dict) else "a mapping of name: value"


SCHEMA: dict[str, dict[str, tuple[Any, Check]]] = {
    "dataset": {
        "name": ("glyphs", _str()),
        "root": (None, _str(none_ok=True)),
        "image_size": (32, _num(8, 1024, integer=True)),
        # on-disk images: generic RGB crops, or the papers' exact pipelines
        "transforms": ("default", _choice("default", "mlrc", "conventional")),
        # on-disk images decoded once into a cache, cropped on the device (bench.data.cache)
        "cache": ("none", _choice("none", "host", "device")),
        "options": ({}, _dict),                 # loader-specific options
    },
    "model": {
        "trunk": ("smallcnn", _str()),
        "embedding_size": (64, _num(1, 1 << 16, integer=True)),
        "pretrained": (False, _bool),
        "pooling": ("avg", _choice("avg", "avgmax")),
        "freeze_bn": (False, _bool),
        "freeze_bn_affine": (False, _bool),   # with freeze_bn: also fix BN's weight and bias
        "weights": (None, _str(none_ok=True)),  # a local weights file for a pretrained trunk
        "normalize_train": (False, _bool),
        "width": (32, _num(1, 4096, integer=True)),  # base channel count of the small CNN
    },
    "method": {
        "name": ("normsoftmax", _str()),
        "params": ({}, _dict),
    },
    "train": {
        "batch_size": (64, _num(2, 1 << 16, integer=True)),
        "m_per_class": (None, _num(1, 1 << 12, integer=True, none_ok=True)),
        "optimizer": ("adam", _choice("adam", "adamw", "rmsprop", "sgd")),
        "lr": (1e-3, _num(0, 10, open_lo=True)),
        "embedder_lr": (None, _num(0, 10, open_lo=True, none_ok=True)),
        "weight_decay": (1e-4, _num(0, 1)),
        "momentum": (0.9, _num(0, 1)),
        "eps": (1e-8, _num(0, 1, open_lo=True)),
        "schedule": ("none", _choice("none", "step", "multistep", "cosine")),
        "milestones": ([], lambda v: None if isinstance(v, list) and all(
            isinstance(x, int) and x > 0 for x in v) else "a list of positive epoch numbers"),
        "gamma": (0.1, _num(0, 1, open_lo=True)),
        "step_size": (10, _num(1, integer=True)),
        "epochs": (10, _num(1, 1 << 20, integer=True)),
        "iterations_per_epoch": (None, _num(1, 1 << 30, integer=True, none_ok=True)),
        "eval_every": (1, _num(1, integer=True)),
        "patience": (None, _num(0, integer=True, none_ok=True)),
        "select_by": ("precision_at_1", _str()),
        "augment": (True, _bool),
        "amp": (False, _bool),
        "device": ("auto", lambda v: None if isinstance(v, str) and (
            v in ("auto", "cpu", "cuda") or v.startswith("cuda:")) else "auto, cpu, cuda or cuda:N"),
        "num_workers": (0, _num(0, 256, integer=True)),
        "max_grad_norm": (None, _num(0, open_lo=True, none_ok=True)),
        "progress": (True, _bool),
        "deterministic": (True, _bool),
        "threads": (None, _num(1, 1024, integer=True, none_ok=True)),
        "log_every": (10, _num(1, 1 << 20, integer=True)),   # iterations per training-log line
        # experiment trackers fed with the training log (bench.train.trackers), with a run folder
        "trackers": ([], lambda v: None if isinstance(v, list) and all(
            isinstance(x, str) and x in ("tensorboard", "mlflow", "wandb") for x in v)
            and len(set(v)) == len(v)
            else "a list of distinct names from tensorboard, mlflow, wandb, e.g. [tensorboard]"),
    },
    "eval": {
        "batch_size": (512, _num(1, 1 << 20, integer=True)),
        "recall_ks": ([1, 2, 4, 8], _int_list),
        "metrics": (None, lambda v: None if v is None or (isinstance(v, list) and all(
            isinstance(x, str) for x in v)) else "null or a list of metric names"),
        # NMI / F1 k-means start: k-means++, or "random" as the papers (for published numbers)
        "kmeans_init": ("kmeans++", _choice("kmeans++", "random")),
    },
    "run": {
        "seed": (0, _num(0, 2 ** 32 - 1, integer=True)),
        "protocol": ("conventional", _choice("conventional", "mlrc")),
        "output": ("runs", _str()),
        "name": (None, _str(none_ok=True)),
    },
}

FREE_FORM = {("method", "params"), ("dataset", "options")}


def defaults() -> dict[str, Any]:
    """A fresh copy of the default config."""
    return {sec: {k: copy.deepcopy(d) for k, (d, _) in keys.items()} for sec, keys in SCHEMA.items()}


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
        if sec not in SCHEMA:
            raise UserError(f"unknown config section {prefix}{sec!r}; valid sections: "
                            + ", ".join(SCHEMA))
        if not isinstance(values, dict):
            raise UserError(f"config section {prefix}{sec!r} must be a mapping, got {values!r}")
        for key, value in values.items():
            if key not in SCHEMA[sec]:
                raise UserError(f"unknown config key {prefix}{sec}.{key}; valid keys in {sec}: "
                                + ", ".join(SCHEMA[sec]))
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
    """Check every value; return the config. Raises UserError on the first problem."""
    for sec, keys in SCHEMA.items():
        for key, (_, check) in keys.items():
            value = cfg[sec][key]
            allowed = check(value)
            if allowed is not None:
                raise UserError(f"invalid config value {sec}.{key}={value!r}; allowed: {allowed}")
    t = cfg["train"]
    from dmlbench.bench.evaluate import metric_keys

    valid = metric_keys(tuple(cfg["eval"]["recall_ks"]))
    computed = cfg["eval"]["metrics"] if cfg["eval"]["metrics"] is not None else valid
    for name in computed:
        if name not in valid:
            raise UserError(f"invalid config value eval.metrics: unknown metric {name!r}; "
                            f"valid metrics: {', '.join(valid)}")
    if t["select_by"] not in computed:
        raise UserError(f"invalid config value train.select_by={t['select_by']!r}; allowed: one "
                        f"of the computed metrics: {', '.join(computed)}")
    m = t["m_per_class"]
    if m is not None and t["batch_size"] % m != 0:
        raise UserError(f"train.m_per_class={m} does not divide train.batch_size="
                        f"{t['batch_size']}; choose a batch size that is a multiple of it")
    return cfg


def load_config(path: "str | Path | None" = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """defaults (or `base`) < YAML file < overrides, validated."""
    cfg = copy.deepcopy(base) if base is not None else defaults()
    if path is not None:
        cfg = merge(cfg, read_yaml(path))
    cfg = apply_overrides(cfg, overrides or [])
    return validate(cfg)


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
