"""Built-in losses: class-weight initialisation (`weight_init`), loss-parameter weight decay
(`loss_weight_decay`), the two multi-similarity methods, SoftTriple without its regulariser."""
from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses, miners, regularizers

from dmlbench.bench.errors import UserError
from dmlbench.methods.losses import SoftmaxLoss, class_weight_init
from dmlbench.methods.registry import WEIGHT_INITS, build_objective, get_method, resolve_params

D, C = 512, 98   # the MemVir reference's CARS196 runs: d = 512, 98 training classes

# registry loss -> (attribute of the class weights, class axis)
CLASS_WEIGHTS = {"softmax": ("W", 1), "normsoftmax": ("W", 1), "cosface": ("W", 1),
                 "arcface": ("W", 1), "proxynca": ("proxies", 0), "proxyanchor": ("proxies", 0),
                 "softtriple": ("fc", 1)}
WITH_LOSS_PARAMS = [*CLASS_WEIGHTS, "margin"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _class_rows(name: str, params: dict | None = None, c: int = C, d: int = D) -> torch.Tensor:
    """The class vectors (rows) of a freshly built loss."""
    attr, axis = CLASS_WEIGHTS[name]
    w = getattr(build_objective(name, c, d, params).loss, attr).detach()
    return w if axis == 0 else w.t()


# (scheme, fan) -> (expected std of an entry, uniform bound or None), by hand: kaiming_normal
# gain sqrt(2): std sqrt(2 / fan); kaiming_uniform with a = sqrt(5): bound 1 / sqrt(fan);
# xavier: std sqrt(2 / (d + C)), uniform bound sqrt(6 / (d + C)).
def _expected(scheme: str, c: int, d: int) -> tuple[float, float | None]:
    return {
        "normal": (1.0, None),
        "kaiming_normal": (math.sqrt(2 / d), None),
        "kaiming_normal_classes": (math.sqrt(2 / c), None),
        "kaiming_uniform": (1 / math.sqrt(3 * d), 1 / math.sqrt(d)),
        "kaiming_uniform_classes": (1 / math.sqrt(3 * c), 1 / math.sqrt(c)),
        "xavier_normal": (math.sqrt(2 / (d + c)), None),
        "xavier_uniform": (math.sqrt(2 / (d + c)), math.sqrt(6 / (d + c))),
    }[scheme]


@pytest.mark.parametrize("scheme", WEIGHT_INITS)
@pytest.mark.parametrize("name", ["normsoftmax", "proxynca"])   # class axis 1 and 0
def test_weight_init_draws_the_stated_distribution(name, scheme):
    torch.manual_seed(0)
    c, d = 300, 64   # fans far apart, so a swapped fan would be off by a factor sqrt(300/64)
    rows = _class_rows(name, {"weight_init": scheme}, c, d)
    assert rows.shape == (c, d)
    std, bound = _expected(scheme, c, d)
    assert rows.std().item() == pytest.approx(std, rel=0.03)
    assert rows.mean().item() == pytest.approx(0.0, abs=0.03 * std)
    if bound is not None:
        assert rows.abs().max().item() <= bound
        assert rows.abs().max().item() == pytest.approx(bound, rel=0.01)


def test_reference_per_class_norms_at_d512():
    """MemVir reference at d = 512, C = 98: Norm-softmax ~1.32, Proxy-NCA ~1.41; PML's N(0, 1)
    default ~22.6 (sqrt(512))."""
    torch.manual_seed(0)
    nsm = _class_rows("normsoftmax", {"weight_init": "kaiming_uniform_classes"}).norm(dim=1)
    nca = _class_rows("proxynca", {"weight_init": "kaiming_normal"}).norm(dim=1)
    default = _class_rows("normsoftmax").norm(dim=1)
    assert nsm.mean().item() == pytest.approx(math.sqrt(D / (3 * C)), rel=0.02)   # 1.32
    assert nca.mean().item() == pytest.approx(math.sqrt(2), rel=0.02)             # 1.41
    assert default.mean().item() == pytest.approx(math.sqrt(D), rel=0.02)         # 22.6
    assert 1.3 <= nsm.mean().item() <= 1.4 and 1.35 <= nca.mean().item() <= 1.45


def test_reference_inits_bit_for_bit():
    """With the same seed, the draws equal the MemVir reference's own torch calls on its
    (d, C) matrices (loss/softmax_variants.py)."""
    torch.manual_seed(3)
    ref = torch.empty(D, C)
    torch.nn.init.kaiming_uniform_(ref, a=math.sqrt(5))            # NormSoftmax
    torch.manual_seed(3)
    W = build_objective("normsoftmax", C, D, {"weight_init": "kaiming_uniform_classes"}).loss.W
    assert torch.equal(W.detach(), ref)
    torch.manual_seed(4)
    ref = torch.empty(D, C)
    torch.nn.init.kaiming_normal_(ref, mode="fan_out")             # ProxyNCA, init_type normal
    torch.manual_seed(4)
    proxies = build_objective("proxynca", C, D, {"weight_init": "kaiming_normal"}).loss.proxies
    # PML keeps proxies as (C, d): the same stream of draws with the same std
    assert torch.equal(proxies.detach().reshape(-1), ref.reshape(-1))


@pytest.mark.parametrize("name, make", [
    ("normsoftmax", lambda: losses.NormalizedSoftmaxLoss(C, D)),
    ("cosface", lambda: losses.CosFaceLoss(C, D)),
    ("arcface", lambda: losses.ArcFaceLoss(C, D)),
    ("proxynca", lambda: losses.ProxyNCALoss(C, D)),
    ("proxyanchor", lambda: losses.ProxyAnchorLoss(C, D)),
    ("softtriple", lambda: losses.SoftTripleLoss(C, D, centers_per_class=10)),
])
def test_default_init_is_pmls_own(name, make):
    """Each loss's default weight_init draws exactly what PML's own default draws."""
    attr, _ = CLASS_WEIGHTS[name]
    torch.manual_seed(1)
    ours = getattr(build_objective(name, C, D).loss, attr).detach()
    torch.manual_seed(1)
    theirs = getattr(make(), attr).detach()
    assert torch.equal(ours, theirs)


def test_softmax_default_init_is_linear_layer_init():
    """Unchanged: nn.Linear's kaiming_uniform_(a=sqrt(5)) on W.t(), i.e. U(+-1/sqrt(d))."""
    torch.manual_seed(2)
    ours = build_objective("softmax", C, D).loss.W.detach()
    torch.manual_seed(2)
    ref = torch.empty(D, C)
    torch.nn.init.kaiming_uniform_(ref.t(), a=math.sqrt(5))   # the call SoftmaxLoss always made
    assert torch.equal(ours, ref)
    assert ours.abs().max().item() <= 1 / math.sqrt(D)
    assert get_method("softmax").defaults["weight_init"] == "kaiming_uniform"


def test_default_weight_init_per_loss():
    want = {"softmax": "kaiming_uniform", "normsoftmax": "normal", "cosface": "normal",
            "arcface": "normal", "proxynca": "normal", "proxyanchor": "kaiming_normal_classes",
            "softtriple": "kaiming_uniform_classes"}
    assert {n: get_method(n).defaults["weight_init"] for n in want} == want
    # MemVir rows inherit their base's default and pass it through
    assert get_method("memvir+normsoftmax").defaults["weight_init"] == "normal"
    torch.manual_seed(0)
    obj = build_objective("memvir+normsoftmax", C, D, {"weight_init": "kaiming_uniform_classes"})
    assert obj.loss.loss.W.abs().max().item() <= 1 / math.sqrt(C)


def test_bad_weight_init_is_a_user_error_naming_the_values():
    for bad in ("kaiming", "Normal", 3):
        with pytest.raises(UserError, match=r"method\.weight_init=.*allowed values: normal, "
                                            r"kaiming_normal, kaiming_normal_classes"):
            build_objective("normsoftmax", C, D, {"weight_init": bad})
    with pytest.raises(UserError, match="has no parameter 'weight_init'"):
        resolve_params("triplet", {"weight_init": "normal"})
    with pytest.raises(ValueError, match="allowed values"):
        class_weight_init("nope", 0)


def test_softmax_loss_takes_a_weight_init_func():
    calls = []

    def init(t: torch.Tensor) -> None:
        calls.append(t.shape)
        torch.nn.init.constant_(t, 0.5)   # torch.nn.init runs without grad, as the schemes do

    loss = SoftmaxLoss(5, 3, weight_init_func=init)
    assert calls == [torch.Size([5, 3])]   # handed W.t(): classes first
    assert torch.all(loss.W == 0.5)


# ----------------------------------------------------------------------------- weight decay


@pytest.mark.parametrize("name", WITH_LOSS_PARAMS)
def test_loss_weight_decay_defaults_to_zero_and_is_settable(name):
    assert get_method(name).defaults["loss_weight_decay"] == 0.0
    assert build_objective(name, 6, 8).loss_weight_decay == 0.0
    obj = build_objective(name, 6, 8, {"loss_weight_decay": 1e-4})
    assert obj.loss_weight_decay == 1e-4
    assert not hasattr(obj.loss, "loss_weight_decay")   # popped, not handed to the loss


@pytest.mark.parametrize("bad", [-1e-4, "1e-4", True, None])
def test_bad_loss_weight_decay_is_a_user_error(bad):
    with pytest.raises(UserError, match=r"method\.loss_weight_decay=.* must be a number >= 0"):
        build_objective("normsoftmax", 6, 8, {"loss_weight_decay": bad})


def test_parameter_free_losses_take_no_loss_weight_decay():
    with pytest.raises(UserError, match="has no parameter 'loss_weight_decay'"):
        build_objective("ms", 6, 8, {"loss_weight_decay": 0.1})
    assert build_objective("ms", 6, 8).loss_weight_decay == 0.0


# ----------------------------------------------------------------------------- MS


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(24, 16, generator=g), dim=1)
    return emb, torch.arange(6).repeat_interleave(4)


def test_ms_is_the_loss_alone_and_ms_miner_mines():
    emb, labels = _batch()
    alone = build_objective("ms", 6, 16, {"alpha": 2.0, "beta": 40.0, "base": 0.5})
    mined = build_objective("ms+miner", 6, 16, {"alpha": 2.0, "beta": 40.0, "base": 0.5,
                                                "epsilon": 0.1})
    assert alone.miner is None and isinstance(mined.miner, miners.MultiSimilarityMiner)
    ref = losses.MultiSimilarityLoss(alpha=2.0, beta=40.0, base=0.5)
    assert alone(emb, labels).item() == pytest.approx(ref(emb, labels).item(), rel=1e-6)
    pairs = miners.MultiSimilarityMiner(epsilon=0.1)(emb, labels)
    assert mined(emb, labels).item() == pytest.approx(ref(emb, labels, pairs).item(), rel=1e-6)
    assert mined(emb, labels).item() != pytest.approx(alone(emb, labels).item(), rel=1e-3)
    assert set(get_method("ms").search_space) == {"alpha", "beta", "base"}
    assert set(get_method("ms+miner").search_space) == {"alpha", "beta", "base", "epsilon"}


# ----------------------------------------------------------------------------- SoftTriple


def test_softtriple_without_regulariser_at_reg_weight_zero():
    emb, labels = _batch(1)
    torch.manual_seed(5)
    obj = build_objective("softtriple", 6, 16, {"reg_weight": 0.0, "centers_per_class": 3})
    assert obj.loss.weight_regularizer is None
    torch.manual_seed(5)
    ref = losses.SoftTripleLoss(6, 16, centers_per_class=3, la=20.0, gamma=0.1, margin=0.01,
                                weight_regularizer=regularizers.SparseCentersRegularizer(6, 3),
                                weight_reg_weight=0.0)
    assert torch.equal(obj.loss.fc, ref.fc)
    assert obj(emb, labels).item() == pytest.approx(ref(emb, labels).item(), rel=1e-6)
    with_reg = build_objective("softtriple", 6, 16, {"centers_per_class": 3})
    assert isinstance(with_reg.loss.weight_regularizer, regularizers.SparseCentersRegularizer)


def test_list_names_each_losss_default_weight_init(capsys):
    from dmlbench.bench.cli import main

    assert main(["list", "methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ")}
    for name in (*CLASS_WEIGHTS, "memvir+proxynca"):
        want = get_method(name).defaults["weight_init"]
        assert lines[name].endswith(f"[weight_init: {want}]"), lines[name]
    assert "weight_init" not in lines["ms"] and "weight_init" not in lines["margin"]
