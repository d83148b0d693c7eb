"""ImageNet trunks of the papers: "bninception", "resnet50", "googlenet", and "timm:<model>".

Each factory follows bench.models' trunk contract and returns a module mapping images to
pooled features (`out_features`: BN-Inception 1024, ResNet50 2048, GoogLeNet 1024, timm: the
model's `num_features`), pooled by bench.models.pool ("avg" or "avgmax").

Pretrained weights (`pretrained=True`) come from, in order:
1. the option `weights=/path/to/file` (a state dict saved with torch.save);
2. the torch hub cache: `torch.hub.get_dir()/checkpoints/<standard file name>`;
3. a download of the standard URL into that cache (torch.hub.load_state_dict_from_url).
Offline with none of these, a UserError names the exact path to put the file at. Loading is
strict: every key of the trunk, with its shape, must be in the file (ImageNet classifier keys
are checked and dropped). timm models download through timm (Hugging Face cache, HF_HOME);
a `weights=` file for them is loaded here, strictly, after timm's checkpoint filter.
"timm:<model>" names resolve through a hook on bench.models' registry (end of this module).

Input normalisation for each trunk is in bench.models.transforms.
"""
from __future__ import annotations

import functools
import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import dmlbench.bench.models as _models
from dmlbench.bench.errors import UserError
from dmlbench.bench.models import bninception as _bni
from dmlbench.bench.models import pool, register_trunk

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class WeightsSpec:
    """Where a trunk's standard ImageNet weights live."""

    trunk: str
    file_name: str
    url: str
    alt_file_names: tuple[str, ...] = ()


BNINCEPTION_WEIGHTS = WeightsSpec("bninception", _bni.WEIGHTS_FILE, _bni.WEIGHTS_URL,
                                  _bni.ALT_WEIGHTS_FILES)
# torchvision's IMAGENET1K_V1 weights (the ones the papers fine-tune); resnet50-19c8e357.pth is
# the same checkpoint under its pre-0.13 name.
RESNET50_WEIGHTS = WeightsSpec("resnet50", "resnet50-0676ba61.pth",
                               "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                               ("resnet50-19c8e357.pth",))
GOOGLENET_WEIGHTS = WeightsSpec("googlenet", "googlenet-1378be20.pth",
                                "https://download.pytorch.org/models/googlenet-1378be20.pth")

def checkpoint_dir() -> Path:
    """torch hub's checkpoint cache (honours TORCH_HOME and torch.hub.set_dir)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hash_prefix(path: Path) -> str | None:
    m = re.search(r"-([a-f0-9]{6,})\.", path.name)
    return m.group(1) if m else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return dict(obj)


def load_weights_file(path: "str | Path") -> dict[str, torch.Tensor]:
    """A state dict from a file, read with torch.load(weights_only=True).

    Old pickles that weights-only loading refuses are read fully only when the file is a
    published checkpoint: its name carries a hash prefix (`name-<sha256 prefix>.pth`) that
    its SHA-256 matches.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    except UserError:
        raise
    except Exception as e:  # an old pickle, or a truncated or foreign file
        first = e
    prefix = _hash_prefix(path)
    if prefix is not None and _sha256(path).startswith(prefix):
        try:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=False)
            except UnicodeDecodeError:          # pickled by Python 2
                obj = torch.load(path, map_location="cpu", weights_only=False,
                                 encoding="latin1")
        except Exception as e:
            raise UserError(f"cannot read weights file {path} ({_brief(e)}); "
                            "replace it") from None
        return _unwrap(obj, path)
    if isinstance(first, pickle.UnpicklingError):
        raise UserError(f"cannot read weights file {path} as plain tensors ({_brief(first)}); "
                        "re-save it with torch.save(model.state_dict(), path)")
    raise UserError(f"cannot read weights file {path} ({_brief(first)}); replace it")


def find_weights(spec: WeightsSpec, weights: "str | None" = None) -> dict[str, torch.Tensor]:
    """The state dict of `spec`: from `weights`, the hub cache, or a download (see module doc)."""
    if weights:
        return load_weights_file(weights)
    cache = checkpoint_dir()
    for name in (spec.file_name, *spec.alt_file_names):
        if (cache / name).is_file():
            return load_weights_file(cache / name)
    target = cache / spec.file_name
    try:
        sd = torch.hub.load_state_dict_from_url(spec.url, map_location="cpu", check_hash=True,
                                                file_name=spec.file_name, weights_only=True)
    except OSError as e:                       # URLError, timeouts, no cache directory
        raise UserError(
            f"trunk {spec.trunk!r}: no pretrained weights found and the download failed "
            f"({_brief(e)}); put the file {spec.file_name} (from {spec.url}) at {target}, or "
            f"pass weights=/path/to/{spec.file_name}, or set model.pretrained=false") from None
    except Exception as e:
        if target.is_file():                   # downloaded and hash-checked: an old pickle
            return load_weights_file(target)
        raise UserError(f"trunk {spec.trunk!r}: downloading {spec.url} failed ({_brief(e)}); "
                        f"put the file at {target} or set model.pretrained=false") from None
    return _unwrap(sd, target)


def _brief(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".strip().splitlines()[0]
    return text if len(text) <= limit else text[:limit] + "..."


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def load_state_dict_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], *,
                           source: str) -> None:
    """Load every key of `module` from `state_dict`, same shapes, no key left over.

    Only BatchNorm's `num_batches_tracked` may be absent (files from before PyTorch 0.4.1).
    Raises a UserError listing missing, unexpected and mis-shaped keys.
    """
    own = module.state_dict()
    sd = dict(state_dict)
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = v.clone()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {_shape(sd[k])} (expected {_shape(own[k])})"
             for k in own if k in sd and _shape(sd[k]) != _shape(own[k])]
    if missing or unexpected or wrong:
        parts = []
        for what, items in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", wrong)):
            if items:
                more = f", ... ({len(items)} in all)" if len(items) > 5 else ""
                parts.append(f"{what}: {', '.join(items[:5])}{more}")
        raise UserError(f"weights from {source} do not fit {type(module).__name__}: "
                        + "; ".join(parts))
    module.load_state_dict(sd, strict=True)


def _check_channels(trunk: str, in_channels: int) -> None:
    if in_channels not in (1, 3):
        raise UserError(f"trunk {trunk!r} takes 1- or 3-channel images, not {in_channels}")


def _check_weights_option(trunk: str, pretrained: bool, weights: "str | None") -> None:
    if weights and not pretrained:
        raise UserError(f"trunk {trunk!r}: weights={weights} given with model.pretrained=false; "
                        "set model.pretrained=true to load it")


@register_trunk("bninception")
def bninception(*, in_channels: int = 3, pretrained: bool = False, pooling: str = "avg",
                weights: "str | None" = None, **_: object) -> _bni.BNInception:
    """BN-Inception (1024-d); state-dict keys are those of bn_inception-52deb4733.pth."""
    _check_weights_option("bninception", pretrained, weights)
    model = _bni.BNInception(pooling=pooling, in_channels=in_channels)
    if pretrained:
        sd = find_weights(BNINCEPTION_WEIGHTS, weights)
        load_state_dict_strict(model, _bni.convert_state_dict(sd),
                               source=weights or BNINCEPTION_WEIGHTS.file_name)
    return model


class TorchvisionTrunk(nn.Module):
    """A torchvision classifier cut before its global pooling; features pooled by `pool`."""

    def __init__(self, net: nn.Module, stages: tuple[str, ...], out_features: int,
                 pooling: str, in_channels: int, pre: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.stages = stages
        self.pre = pre
        self.out_features = out_features
        self.pooling = pooling
        self.in_channels = in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.pre is not None:
            x = getattr(self.net, self.pre)(x)
        for name in self.stages:
            x = getattr(self.net, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.features(x), self.pooling)


def _strip_head(net: nn.Module, names: tuple[str, ...]) -> None:
    for name in names:
        setattr(net, name, None)


@register_trunk("resnet50")
def resnet50(*, in_channels: int = 3, pretrained: bool = False, pooling: str = "avg",
             weights: "str | None" = None, **_: object) -> TorchvisionTrunk:
    """torchvision ResNet50 (2048-d), ImageNet IMAGENET1K_V1 weights when pretrained."""
    from torchvision.models import resnet50 as tv_resnet50

    _check_channels("resnet50", in_channels)
    _check_weights_option("resnet50", pretrained, weights)
    net = tv_resnet50(weights=None)
    if pretrained:
        load_state_dict_strict(net, find_weights(RESNET50_WEIGHTS, weights),
                               source=weights or RESNET50_WEIGHTS.file_name)
    _strip_head(net, ("avgpool", "fc"))
    stages = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return TorchvisionTrunk(net, stages, 2048, pooling, in_channels)


@register_trunk("googlenet")
def googlenet(*, in_channels: int = 3, pretrained: bool = False, pooling: str = "avg",
              weights: "str | None" = None, **_: object) -> TorchvisionTrunk:
    """torchvision GoogLeNet (Inception v1, 1024-d), ImageNet weights when pretrained.

    As torchvision does with its weights, the pretrained model re-maps ImageNet-normalised
    input to the scale the Google weights expect (`transform_input`).
    """
    from torchvision.models import googlenet as tv_googlenet

    _check_channels("googlenet", in_channels)
    _check_weights_option("googlenet", pretrained, weights)
    net = tv_googlenet(weights=None, aux_logits=True, transform_input=pretrained,
                       init_weights=not pretrained)
    if pretrained:
        load_state_dict_strict(net, find_weights(GOOGLENET_WEIGHTS, weights),
                               source=weights or GOOGLENET_WEIGHTS.file_name)
    _strip_head(net, ("aux1", "aux2", "avgpool", "dropout", "fc"))
    net.aux_logits = False
    stages = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
              "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
              "inception4e", "maxpool4", "inception5a", "inception5b")
    return TorchvisionTrunk(net, stages, 1024, pooling, in_channels, pre="_transform_input")


# --- timm ---------------------------------------------------------------------------------

def _import_timm():
    try:
        import timm
    except ModuleNotFoundError:
        raise UserError("timm trunks need the timm package: pip install timm") from None
    return timm


class TimmTrunk(nn.Module):
    """A timm model created with num_classes=0, global_pool="", pooled by bench.models.pool.

    Maps (B, C, H, W) and NHWC maps are pooled over space; token outputs (B, N, C) of
    transformers over their patch tokens (class/register tokens excluded, as timm's "avg").
    """

    def __init__(self, model: nn.Module, pooling: str, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.in_channels = in_channels
        self.out_features = int(model.num_features)
        self.output_fmt = str(getattr(model, "output_fmt", "NCHW"))
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        y = self.model(x)
        if y.ndim == 2:
            return y
        if y.ndim == 3:                                   # (B, tokens, C)
            y = y[:, self.num_prefix_tokens:].transpose(1, 2).unsqueeze(-1)
        elif self.output_fmt == "NHWC":
            y = y.permute(0, 3, 1, 2)
        return pool(y, self.pooling)


def timm_trunk(model_name: str, *, in_channels: int = 3, pretrained: bool = False,
               pooling: str = "avg", weights: "str | None" = None, **_: object) -> TimmTrunk:
    """Any timm model by name: timm.create_model(name, pretrained, num_classes=0,
    global_pool="")."""
    timm = _import_timm()
    trunk = TIMM_PREFIX + model_name
    _check_channels(trunk, in_channels)
    _check_weights_option(trunk, pretrained, weights)
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else "; see timm.list_models()"
        raise UserError(f"unknown timm model {model_name!r} (trunk {trunk!r}){hint}")
    kwargs: dict = {"num_classes": 0, "global_pool": ""}
    if weights:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        _load_timm_file(model, model_name, weights)
        return TimmTrunk(model, pooling, in_channels)
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except Exception as e:
        if not pretrained:
            raise
        raise UserError(
            f"trunk {trunk!r}: cannot load its pretrained weights ({_brief(e)}); "
            "offline, fetch them once where there is internet (timm caches them under "
            "HF_HOME, ~/.cache/huggingface) and copy that cache here, or pass "
            "weights=/path/to/file, or set model.pretrained=false") from None
    return TimmTrunk(model, pooling, in_channels)


def _load_timm_file(model: nn.Module, model_name: str, weights: str) -> None:
    """Strict load of a local checkpoint into a headless timm model.

    The model family's `checkpoint_filter_fn` (original-format checkpoints) is applied as
    timm does; the ImageNet classifier keys named by the pretrained config are dropped.
    (timm's own file loading is not strict once the classifier is removed.)
    """
    import sys

    sd = load_weights_file(weights)
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            sd = filter_fn(sd, model)
        except TypeError:
            sd = filter_fn(sd)
        except Exception:                   # a filter for another format; check the file as is
            pass
    heads = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items()
          if k in own or not any(k.startswith(h + ".") for h in heads)}
    load_state_dict_strict(model, sd, source=f"{weights} (timm model {model_name!r})")


def _resolve_timm(name: str):
    """Trunk factory for "timm:<model name>", or None for other names."""
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return functools.partial(timm_trunk, name[len(TIMM_PREFIX):])
    return None


_models.register_trunk_resolver(_resolve_timm)
