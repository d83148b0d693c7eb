"""Backbones: BN-Inception's key list, wiring and strict loading; weights lookup; torchvision
and timm trunks. No weight downloads: every state dict here is generated."""
from __future__ import annotations

import hashlib
import pickle
import urllib.error
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dmlbench.bench.errors import UserError
from dmlbench.bench.models import EmbeddingModel, build_model, build_trunk, list_trunks

# The convolutions of pretrainedmodels' BNInception.__init__ (Cadene/pretrained-models.pytorch,
# pretrainedmodels/models/bninception.py), transcribed from that file: name, in, out, kernel,
# stride. Each has a bias and a BatchNorm "<name>_bn"; padding is kernel // 2.
REFERENCE_CONVS = """
conv1_7x7_s2 3 64 7 2
conv2_3x3_reduce 64 64 1 1
conv2_3x3 64 192 3 1
inception_3a_1x1 192 64 1 1
inception_3a_3x3_reduce 192 64 1 1
inception_3a_3x3 64 64 3 1
inception_3a_double_3x3_reduce 192 64 1 1
inception_3a_double_3x3_1 64 96 3 1
inception_3a_double_3x3_2 96 96 3 1
inception_3a_pool_proj 192 32 1 1
inception_3b_1x1 256 64 1 1
inception_3b_3x3_reduce 256 64 1 1
inception_3b_3x3 64 96 3 1
inception_3b_double_3x3_reduce 256 64 1 1
inception_3b_double_3x3_1 64 96 3 1
inception_3b_double_3x3_2 96 96 3 1
inception_3b_pool_proj 256 64 1 1
inception_3c_3x3_reduce 320 128 1 1
inception_3c_3x3 128 160 3 2
inception_3c_double_3x3_reduce 320 64 1 1
inception_3c_double_3x3_1 64 96 3 1
inception_3c_double_3x3_2 96 96 3 2
inception_4a_1x1 576 224 1 1
inception_4a_3x3_reduce 576 64 1 1
inception_4a_3x3 64 96 3 1
inception_4a_double_3x3_reduce 576 96 1 1
inception_4a_double_3x3_1 96 128 3 1
inception_4a_double_3x3_2 128 128 3 1
inception_4a_pool_proj 576 128 1 1
inception_4b_1x1 576 192 1 1
inception_4b_3x3_reduce 576 96 1 1
inception_4b_3x3 96 128 3 1
inception_4b_double_3x3_reduce 576 96 1 1
inception_4b_double_3x3_1 96 128 3 1
inception_4b_double_3x3_2 128 128 3 1
inception_4b_pool_proj 576 128 1 1
inception_4c_1x1 576 160 1 1
inception_4c_3x3_reduce 576 128 1 1
inception_4c_3x3 128 160 3 1
inception_4c_double_3x3_reduce 576 128 1 1
inception_4c_double_3x3_1 128 160 3 1
inception_4c_double_3x3_2 160 160 3 1
inception_4c_pool_proj 576 128 1 1
inception_4d_1x1 608 96 1 1
inception_4d_3x3_reduce 608 128 1 1
inception_4d_3x3 128 192 3 1
inception_4d_double_3x3_reduce 608 160 1 1
inception_4d_double_3x3_1 160 192 3 1
inception_4d_double_3x3_2 192 192 3 1
inception_4d_pool_proj 608 128 1 1
inception_4e_3x3_reduce 608 128 1 1
inception_4e_3x3 128 192 3 2
inception_4e_double_3x3_reduce 608 192 1 1
inception_4e_double_3x3_1 192 256 3 1
inception_4e_double_3x3_2 256 256 3 2
inception_5a_1x1 1056 352 1 1
inception_5a_3x3_reduce 1056 192 1 1
inception_5a_3x3 192 320 3 1
inception_5a_double_3x3_reduce 1056 160 1 1
inception_5a_double_3x3_1 160 224 3 1
inception_5a_double_3x3_2 224 224 3 1
inception_5a_pool_proj 1056 128 1 1
inception_5b_1x1 1024 352 1 1
inception_5b_3x3_reduce 1024 192 1 1
inception_5b_3x3 192 320 3 1
inception_5b_double_3x3_reduce 1024 192 1 1
inception_5b_double_3x3_1 192 224 3 1
inception_5b_double_3x3_2 224 224 3 1
inception_5b_pool_proj 1024 128 1 1
"""
CONVS = {row.split()[0]: tuple(int(v) for v in row.split()[1:])
         for row in REFERENCE_CONVS.strip().splitlines()}
FILE = "bn_inception-52deb4733.pth"


def reference_keys(bn_shape_1c: bool = False, classifier: bool = True) -> dict[str, tuple]:
    """(key -> shape) of the published weights file, from the table above."""
    keys: dict[str, tuple] = {}
    for name, (cin, cout, k, _) in CONVS.items():
        keys[f"{name}.weight"] = (cout, cin, k, k)
        keys[f"{name}.bias"] = (cout,)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}_bn.{leaf}"] = (1, cout) if bn_shape_1c else (cout,)
    if classifier:
        keys["last_linear.weight"] = (1000, 1024)
        keys["last_linear.bias"] = (1000,)
    return keys


def generated_state_dict(seed: int = 0, bn_shape_1c: bool = True) -> OrderedDict:
    """Random weights with every key and shape of the file; He-scaled convs and BN statistics
    near 1 keep activations finite through the 69 layers."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape in reference_keys(bn_shape_1c).items():
        if key.endswith("running_var"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("_bn.weight"):
            t = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        sd[key] = t
    return sd


def reference_forward(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """BN-Inception features written from pretrainedmodels' `features()`, functionally."""
    sd = {k: v.reshape(-1) if "_bn." in k else v for k, v in sd.items()}

    def cbr(name: str, x: torch.Tensor) -> torch.Tensor:
        _, _, k, s = CONVS[name]
        x = F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=s, padding=k // 2)
        x = F.batch_norm(x, sd[f"{name}_bn.running_mean"], sd[f"{name}_bn.running_var"],
                         sd[f"{name}_bn.weight"], sd[f"{name}_bn.bias"], False, 0.0, 1e-5)
        return F.relu(x)

    x = F.max_pool2d(cbr("conv1_7x7_s2", x), 3, 2, ceil_mode=True)
    x = F.max_pool2d(cbr("conv2_3x3", cbr("conv2_3x3_reduce", x)), 3, 2, ceil_mode=True)
    for m in ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        p = f"inception_{m}_"
        b3 = cbr(p + "3x3", cbr(p + "3x3_reduce", x))
        bd = cbr(p + "double_3x3_2", cbr(p + "double_3x3_1", cbr(p + "double_3x3_reduce", x)))
        if m in ("3c", "4e"):
            x = torch.cat([b3, bd, F.max_pool2d(x, 3, 2, ceil_mode=True)], 1)
            continue
        if m == "5b":
            pooled = F.max_pool2d(x, 3, 1, 1, ceil_mode=True)
        else:
            pooled = F.avg_pool2d(x, 3, 1, 1, ceil_mode=True, count_include_pad=True)
        x = torch.cat([cbr(p + "1x1", x), b3, bd, cbr(p + "pool_proj", pooled)], 1)
    return x


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache; any download attempt fails as if offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _bni(**kw):
    args = dict(in_channels=3, pretrained=False, pooling="avg", width=32)
    args.update(kw)
    return build_trunk("bninception", **args)


# --- BN-Inception -------------------------------------------------------------------------

def test_bninception_state_dict_keys_and_shapes_are_the_weight_files():
    own = {k: tuple(v.shape) for k, v in _bni().state_dict().items()
           if not k.endswith("num_batches_tracked")}
    ref = reference_keys(classifier=False)
    assert len(ref) == 69 * 6 == 414
    assert own == ref
    assert _bni().out_features == 1024


def test_strict_load_of_generated_file_and_forward_match_reference(tmp_path, hub):
    sd = generated_state_dict(bn_shape_1c=True)
    path = tmp_path / FILE
    torch.save(sd, path)
    trunk = _bni(pretrained=True, weights=str(path)).eval()
    own = trunk.state_dict()
    for key, value in sd.items():
        if key.startswith("last_linear"):
            assert key not in own
        else:
            assert torch.equal(own[key], value.reshape(own[key].shape)), key
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        fmap = reference_forward(sd, x)
        out = trunk(x)
        assert fmap.shape == (2, 1024, 2, 2)
        assert fmap.abs().mean() > 1e-3
        torch.testing.assert_close(trunk.features(x), fmap, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out, fmap.mean(dim=(2, 3)), rtol=1e-4, atol=1e-4)
        trunk.pooling = "avgmax"
        torch.testing.assert_close(trunk(x), fmap.mean(dim=(2, 3)) + fmap.amax(dim=(2, 3)),
                                   rtol=1e-4, atol=1e-4)


def test_strict_load_accepts_bn_as_c_and_file_without_classifier(tmp_path, hub):
    sd = generated_state_dict(bn_shape_1c=False)
    del sd["last_linear.weight"], sd["last_linear.bias"]
    torch.save(sd, tmp_path / "w.pth")
    trunk = _bni(pretrained=True, weights=str(tmp_path / "w.pth"))
    assert torch.equal(trunk.inception_5b_pool_proj_bn.running_var,
                       sd["inception_5b_pool_proj_bn.running_var"])


@pytest.mark.parametrize("damage, words", [
    (lambda sd: sd.pop("inception_4c_3x3_bn.running_mean"),
     ["missing: inception_4c_3x3_bn.running_mean"]),
    (lambda sd: sd.__setitem__("inception_6a_1x1.weight", torch.zeros(1)),
     ["unexpected: inception_6a_1x1.weight"]),
    (lambda sd: sd.__setitem__("inception_3a_3x3.weight", torch.zeros(64, 64, 1, 1)),
     ["wrong shape: inception_3a_3x3.weight (64, 64, 1, 1) (expected (64, 64, 3, 3))"]),
    (lambda sd: sd.__setitem__("conv2_3x3_bn.bias", torch.zeros(1, 191)),
     ["wrong shape: conv2_3x3_bn.bias (191,) (expected (192,))"]),
    (lambda sd: sd.__setitem__("last_linear.weight", torch.zeros(10, 1024)),
     ["last_linear.weight has shape (10, 1024), expected (1000, 1024)"]),
])
def test_strict_load_rejects_missing_extra_and_misshaped_keys(tmp_path, hub, damage, words):
    sd = generated_state_dict()
    damage(sd)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(UserError) as e:
        _bni(pretrained=True, weights=str(tmp_path / "bad.pth"))
    for w in words:
        assert w in str(e.value)


def test_many_missing_keys_are_summarised(tmp_path, hub):
    sd = {k: v for k, v in generated_state_dict().items() if not k.startswith("inception_5")}
    torch.save(sd, tmp_path / "half.pth")
    with pytest.raises(UserError, match=r"missing: .*\(84 in all\)"):
        _bni(pretrained=True, weights=str(tmp_path / "half.pth"))


def test_offline_without_weights_says_where_to_put_the_file(hub):
    with pytest.raises(UserError) as e:
        _bni(pretrained=True)
    msg = str(e.value)
    assert f"put the file {FILE}" in msg
    assert f"at {hub / FILE}," in msg
    assert "http://data.lip6.fr/cadene/pretrainedmodels/" + FILE in msg
    assert "model.pretrained=false" in msg and "weights=/path/to/" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", [FILE, "bn_inception-239d2248.pth"])
def test_weights_in_torch_hub_cache_are_found(hub, monkeypatch, name):
    sd = generated_state_dict(seed=3)
    hub.mkdir(parents=True)
    torch.save(sd, hub / name)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("downloaded although the file was cached"))
    trunk = _bni(pretrained=True)
    assert torch.equal(trunk.conv1_7x7_s2.weight, sd["conv1_7x7_s2.weight"])


def test_download_goes_to_the_hub_cache_with_the_standard_name(hub, monkeypatch):
    sd = generated_state_dict(seed=4)
    calls = []

    def fake_download(url, **kw):
        calls.append((url, kw))
        return sd

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    trunk = _bni(pretrained=True)
    assert calls[0][0] == "http://data.lip6.fr/cadene/pretrainedmodels/" + FILE
    assert calls[0][1]["file_name"] == FILE and calls[0][1]["check_hash"]
    assert torch.equal(trunk.conv2_3x3.bias, sd["conv2_3x3.bias"])


def test_downloaded_file_that_needs_full_unpickling_must_match_its_name_hash(hub, monkeypatch):
    def fake_download(url, **kw):
        hub.mkdir(parents=True)
        torch.save(_Pickled(generated_state_dict()), hub / kw["file_name"])
        raise pickle.UnpicklingError("Weights only load failed")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(UserError, match=f"cannot read weights file {hub / FILE} as plain"):
        _bni(pretrained=True)


def test_missing_weights_file_and_weights_without_pretrained(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        _bni(pretrained=True, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match="set model.pretrained=true"):
        _bni(pretrained=False, weights=str(tmp_path / "nope.pth"))


class _Pickled(OrderedDict):
    """A container weights-only loading refuses, as old published pickles can be."""


def test_full_unpickling_only_for_published_files_whose_hash_matches(tmp_path):
    from dmlbench.bench.models.backbones import load_weights_file

    sd = _Pickled(a=torch.ones(2))
    plain = tmp_path / "w.pth"
    torch.save(sd, plain)
    with pytest.raises(UserError, match="as plain tensors"):
        load_weights_file(plain)
    digest = hashlib.sha256(plain.read_bytes()).hexdigest()
    published = tmp_path / f"w-{digest[:8]}.pth"
    plain.rename(published)
    assert torch.equal(load_weights_file(published)["a"], torch.ones(2))
    forged = tmp_path / "w-00000000.pth"
    published.rename(forged)
    with pytest.raises(UserError, match="as plain tensors"):
        load_weights_file(forged)


def test_truncated_weights_file_is_a_user_error(tmp_path):
    from dmlbench.bench.models.backbones import load_weights_file

    path = tmp_path / "t.pth"
    torch.save({"a": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="cannot read weights file"):
        load_weights_file(path)


def test_bninception_input_sizes_and_grey_input():
    trunk = _bni(in_channels=1).eval()
    with torch.no_grad():
        assert trunk(torch.zeros(1, 1, 32, 32)).shape == (1, 1024)
    with pytest.raises(UserError, match="cannot take 50x50 images"):
        trunk(torch.zeros(1, 1, 50, 50))
    from dmlbench.bench.models.bninception import input_size_ok
    assert input_size_ok(224) and input_size_ok(227) and not input_size_ok(240)
    with pytest.raises(UserError, match="1- or 3-channel"):
        _bni(in_channels=4)


def test_embedding_model_with_bninception_freezes_bn_and_trains():
    cfg = {"trunk": "bninception", "pretrained": False, "pooling": "avgmax", "width": 32,
           "embedding_size": 16, "normalize_train": True, "freeze_bn": True}
    model = build_model(cfg, in_channels=3)
    assert isinstance(model, EmbeddingModel) and model.embedder.in_features == 1024
    model.train()
    bns = [m for m in model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 69 and not any(m.training for m in bns)
    before = model.trunk.conv1_7x7_s2_bn.running_mean.clone()
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert torch.allclose(out.norm(dim=1), torch.ones(2))
    assert torch.equal(model.trunk.conv1_7x7_s2_bn.running_mean, before)
    assert model.trunk.conv1_7x7_s2.weight.grad is not None


# --- torchvision --------------------------------------------------------------------------

def test_resnet50_loads_cached_weights_and_pools(hub):
    import torchvision

    ref = torchvision.models.resnet50(weights=None)
    hub.mkdir(parents=True)
    torch.save(ref.state_dict(), hub / "resnet50-0676ba61.pth")
    trunk = build_trunk("resnet50", in_channels=3, pretrained=True, pooling="avgmax", width=1)
    assert trunk.out_features == 2048
    assert not any(k.startswith("net.fc") for k in trunk.state_dict())
    ref.eval()
    trunk.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref.fc = torch.nn.Identity()
        fmap = torch.nn.Sequential(*list(ref.children())[:-2])(x)
        torch.testing.assert_close(trunk(x), fmap.mean((2, 3)) + fmap.amax((2, 3)))
        ref.avgpool.eval()
        torch.testing.assert_close(build_trunk("resnet50", in_channels=3, pretrained=True,
                                               pooling="avg", width=1).eval()(x), ref(x))


def test_resnet50_offline_message_and_wrong_file(hub, tmp_path):
    with pytest.raises(UserError, match=f"at {hub / 'resnet50-0676ba61.pth'}, or pass"):
        build_trunk("resnet50", in_channels=3, pretrained=True, pooling="avg", width=1)
    torch.save(generated_state_dict(), tmp_path / "bni.pth")
    with pytest.raises(UserError, match="do not fit ResNet"):
        build_trunk("resnet50", in_channels=3, pretrained=True, pooling="avg", width=1,
                    weights=str(tmp_path / "bni.pth"))


def test_googlenet_loads_file_with_aux_heads_and_drops_them(tmp_path, hub):
    import torchvision

    ref = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    torch.save(ref.state_dict(), tmp_path / "g.pth")
    trunk = build_trunk("googlenet", in_channels=3, pretrained=True, pooling="avg", width=1,
                        weights=str(tmp_path / "g.pth")).eval()
    assert trunk.out_features == 1024
    assert not any("aux" in k or k.startswith("net.fc") for k in trunk.state_dict())
    ref.eval()
    ref.transform_input = True
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(trunk(x), ref(x))
    with pytest.raises(UserError, match="put the file googlenet-1378be20.pth"):
        build_trunk("googlenet", in_channels=3, pretrained=True, pooling="avg", width=1)


def test_registry_lists_backbones():
    names = list_trunks()
    assert {"bninception", "resnet50", "googlenet", "smallcnn"} <= set(names)


# --- timm ---------------------------------------------------------------------------------

try:
    import timm
except ModuleNotFoundError:
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install timm); "
                                                     "timm trunk tests skipped")


@needs_timm
def test_timm_cnn_trunk_by_name_pools_its_map():
    trunk = build_trunk("timm:test_resnet", in_channels=3, pretrained=False, pooling="avgmax",
                        width=1).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = trunk.model.forward_features(x)
        assert fmap.ndim == 4 and trunk.out_features == fmap.shape[1]
        torch.testing.assert_close(trunk(x), fmap.mean((2, 3)) + fmap.amax((2, 3)))


@needs_timm
def test_timm_vit_trunk_pools_patch_tokens():
    trunk = build_trunk("timm:test_vit", in_channels=1, pretrained=False, pooling="avg",
                        width=1).eval()
    x = torch.randn(2, 1, 160, 160)
    with torch.no_grad():
        tokens = trunk.model(x.expand(-1, 3, -1, -1))
        out = trunk(x)
    n = trunk.model.num_prefix_tokens
    assert tokens.ndim == 3 and n >= 1
    assert out.shape == (2, trunk.out_features)
    torch.testing.assert_close(out, tokens[:, n:].mean(1))


@needs_timm
def test_timm_weights_from_local_file(tmp_path):
    src = timm.create_model("test_resnet", pretrained=False)          # with its classifier
    torch.save(src.state_dict(), tmp_path / "tr.pth")
    assert any(k.startswith("fc.") for k in src.state_dict())
    trunk = build_trunk("timm:test_resnet", in_channels=3, pretrained=True, pooling="avg",
                        width=1, weights=str(tmp_path / "tr.pth"))
    for k, v in trunk.model.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    torch.save(generated_state_dict(), tmp_path / "bni.pth")
    with pytest.raises(UserError,
                       match=r"timm model 'test_resnet'\) do not fit ResNet: missing: "):
        build_trunk("timm:test_resnet", in_channels=3, pretrained=True, pooling="avg",
                    width=1, weights=str(tmp_path / "bni.pth"))


@needs_timm
def test_timm_unknown_model_and_offline_pretrained(monkeypatch):
    with pytest.raises(UserError, match="unknown timm model 'resnet5000'"):
        build_trunk("timm:resnet5000", in_channels=3, pretrained=False, pooling="avg", width=1)
    import timm.models._builder as builder

    if not hasattr(builder, "load_state_dict_from_hf"):
        pytest.skip("this timm version loads hub weights differently")

    def offline(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as e:
        build_trunk("timm:test_resnet", in_channels=3, pretrained=True, pooling="avg", width=1)
    assert "model.pretrained=false" in str(e.value) and "weights=/path/to/file" in str(e.value)


def test_timm_names_resolve_through_the_resolver_hook():
    import functools

    import dmlbench.bench.models
    from dmlbench.bench.models.backbones import _resolve_timm, timm_trunk

    assert "timm:<model name>" in list_trunks()     # imports the built-in trunk modules
    assert _resolve_timm in dmlbench.bench.models._RESOLVERS
    f = _resolve_timm("timm:resnet18")
    assert isinstance(f, functools.partial) and f.func is timm_trunk and f.args == ("resnet18",)
    assert _resolve_timm("timm:") is None and _resolve_timm("resnet50") is None
    with pytest.raises(UserError, match="unknown trunk 'nope'"):
        dmlbench.bench.models.build_trunk("nope", in_channels=3, pretrained=False, pooling="avg")


def test_timm_trunk_without_timm_installed_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UserError, match="pip install timm"):
        build_trunk("timm:resnet50", in_channels=3, pretrained=False, pooling="avg", width=1)
