"""MemVir: exactness against an independent reference (a fresh loss of C*(1+k) classes on the
concatenated inputs), curriculum, ablations, warm-up, storage options, state round trip."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from pytorch_metric_learning import losses, regularizers

from dmlbench.bench.errors import UserError
from dmlbench.methods.curricularface import CurricularFaceLoss
from dmlbench.methods.losses import SoftmaxLoss
from dmlbench.methods.memvir import MemVir, _components_for
from dmlbench.methods.registry import build_objective, get_method, list_methods

C, D = 4, 8
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids oversubscription on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Case:
    make: Callable[[int, bool], torch.nn.Module]   # (num_classes, with_regulariser) -> loss
    params: tuple[tuple[str, int], ...]              # (weight name, class axis)
    group: int = 1                                    # weight rows per class (SoftTriple centers)
    reg: Callable[[int], torch.nn.Module] | None = None   # regulariser for C classes
    reg_view: Callable[[dict], torch.Tensor] | None = None
    reg_weight: float = 1.0


def _softtriple(c, with_reg):
    kw = dict(weight_regularizer=regularizers.SparseCentersRegularizer(c, 3),
              weight_reg_weight=0.2) if with_reg else {}
    return losses.SoftTripleLoss(c, D, centers_per_class=3, la=20, gamma=0.1, margin=0.01, **kw)


CASES = {
    "softmax": Case(lambda c, r: SoftmaxLoss(c, D), (("W", 1),)),
    "softmax_bias": Case(lambda c, r: SoftmaxLoss(c, D, bias=True), (("W", 1), ("b", 0))),
    "normsoftmax": Case(lambda c, r: losses.NormalizedSoftmaxLoss(c, D, temperature=0.1),
                        (("W", 1),)),
    "cosface": Case(lambda c, r: losses.CosFaceLoss(c, D, margin=0.35, scale=16), (("W", 1),)),
    "arcface": Case(lambda c, r: losses.ArcFaceLoss(c, D, margin=28.6, scale=16), (("W", 1),)),
    "largemargin": Case(lambda c, r: losses.LargeMarginSoftmaxLoss(c, D, margin=4, scale=1),
                        (("W", 1),)),
    "sphereface": Case(lambda c, r: losses.SphereFaceLoss(c, D, margin=4, scale=1), (("W", 1),)),
    "proxynca": Case(lambda c, r: losses.ProxyNCALoss(c, D, softmax_scale=3), (("proxies", 0),)),
    "proxyanchor": Case(lambda c, r: losses.ProxyAnchorLoss(c, D, margin=0.1, alpha=32),
                        (("proxies", 0),)),
    "curricularface": Case(lambda c, r: CurricularFaceLoss(c, D, margin=0.5, scale=16),
                           (("W", 1),)),
    "softtriple": Case(lambda c, r: _softtriple(c, False), (("fc", 1),), group=3),
    # weight regularisers must see the current weights only
    "normsoftmax_reg": Case(
        lambda c, r: losses.NormalizedSoftmaxLoss(
            c, D, temperature=0.1,
            **(dict(weight_regularizer=regularizers.LpRegularizer(), weight_reg_weight=0.5)
               if r else {})),
        (("W", 1),), reg=lambda c: regularizers.LpRegularizer(),
        reg_view=lambda w: w["W"].t(), reg_weight=0.5),
    "softtriple_reg": Case(_softtriple, (("fc", 1),), group=3,
                           reg=lambda c: regularizers.SparseCentersRegularizer(c, 3),
                           reg_view=lambda w: w["fc"].t(), reg_weight=0.2),
}


def _reference(case: Case, current: dict[str, torch.Tensor], emb: torch.Tensor,
               labels: torch.Tensor, selected: list, *, virtual_embeddings: bool = True,
               virtual_weights: bool = True, t_buffer: torch.Tensor | None = None):
    """A fresh loss with C*(1+k) classes whose weights are the concatenation; returns value,
    grad w.r.t. embeddings, grads w.r.t. the current weights, and CurricularFace's new t."""
    k = len(selected) if virtual_weights else 0
    ref = case.make(C * (1 + k), False)
    ref_params = {}
    for name, axis in case.params:
        parts = [current[name].detach().clone()]
        if virtual_weights:
            parts += [step["weights"][name] for step in selected]
        ref_params[name] = torch.nn.Parameter(torch.cat(parts, dim=axis))
        setattr(ref, name, ref_params[name])
    if t_buffer is not None:
        ref.t.copy_(t_buffer)
    e = emb.detach().clone().requires_grad_(True)
    embs, labs = [e], [labels]
    if virtual_embeddings:
        for j, step in enumerate(selected, start=1):
            embs.append(step["emb"])
            labs.append(step["labels"] + (j * C if virtual_weights else 0))
    value = ref(torch.cat(embs), torch.cat(labs))
    if case.reg is not None:
        cur = {n: ref_params[n].narrow(a, 0, C * case.group) for n, a in case.params}
        value = value + case.reg_weight * case.reg(C)(case.reg_view(cur))
    value.backward()
    grads = {n: ref_params[n].grad.narrow(a, 0, C * case.group) for n, a in case.params}
    return value.detach(), e.grad, grads, (ref.t.clone() if t_buffer is not None else None)


def _run_sequence(case_name: str, *, num_steps=3, step_gap=1, warmup=2, epochs=9,
                  sizes=(6, 6, 6, 4), step_pacing=True, virtual_embeddings=True,
                  virtual_weights=True, **storage):
    """Train the wrapped loss's weights with SGD on random embeddings; at every step compare
    the wrapper with the reference built from our own record of past steps."""
    case = CASES[case_name]
    torch.manual_seed(0)
    wrapper = MemVir(case.make(C, True), num_steps=num_steps, step_gap=step_gap,
                     warmup_epochs=warmup, step_pacing=step_pacing,
                     virtual_embeddings=virtual_embeddings, virtual_weights=virtual_weights,
                     **storage)
    opt = torch.optim.SGD(wrapper.parameters(), lr=0.5)
    gap1, cap = step_gap + 1, num_steps * (step_gap + 1)
    past, ks, values = [], [], []
    curricular = isinstance(wrapper.loss, CurricularFaceLoss)
    t_buffer = wrapper.loss.t.clone() if curricular else None
    for epoch in range(epochs):
        wrapper.set_epoch(epoch)
        for batch in sizes:
            emb = torch.randn(batch, D)
            labels = torch.randint(0, C, (batch,))
            current = {n: getattr(wrapper.loss, n).detach().clone() for n, _ in case.params}
            e = emb.clone().requires_grad_(True)
            opt.zero_grad()
            value = wrapper(e, labels)
            value.backward()

            active = epoch >= warmup
            t = len(past)
            available = min(t, cap) // gap1
            k = min(num_steps, available) if step_pacing else (
                num_steps if available >= num_steps else 0)
            k = k if active else 0
            selected = [past[t - j * gap1] for j in range(1, k + 1)]
            ref_value, ref_emb_grad, ref_grads, t_buffer = _reference(
                case, current, emb, labels, selected, virtual_embeddings=virtual_embeddings,
                virtual_weights=virtual_weights, t_buffer=t_buffer)
            assert wrapper.num_virtual_steps == k
            torch.testing.assert_close(value.detach(), ref_value, **TOL)
            torch.testing.assert_close(e.grad, ref_emb_grad, **TOL)
            for name, _ in case.params:
                torch.testing.assert_close(getattr(wrapper.loss, name).grad, ref_grads[name],
                                           **TOL)
            if curricular:
                torch.testing.assert_close(wrapper.loss.t, t_buffer, **TOL)
            if active:
                past.append({"emb": emb, "labels": labels, "weights": current})
            else:
                assert wrapper.queue_length == 0 and wrapper.memory_bytes == 0
            ks.append(k)
            values.append(value.item())
            opt.step()
    return wrapper, ks, values


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_exact_against_concatenated_reference(case_name):
    wrapper, ks, _ = _run_sequence(case_name)
    assert max(ks) == 3 and ks[:8] == [0] * 8                      # warm-up: 2 epochs of 4 steps
    assert ks[8:16] == [0, 0, 1, 1, 2, 2, 3, 3]                     # staircase, one per M+1
    assert wrapper.queue_length == 6


@pytest.mark.parametrize("case_name", ["normsoftmax", "proxyanchor", "softmax_bias",
                                       "softtriple", "curricularface"])
@pytest.mark.parametrize("ablation", ["weights_only", "embeddings_only"])
def test_ablations_match_reference(case_name, ablation):
    flags = dict(virtual_embeddings=ablation == "embeddings_only",
                 virtual_weights=ablation == "weights_only")
    wrapper, ks, _ = _run_sequence(case_name, epochs=6, **flags)
    assert max(ks) == 3
    if ablation == "weights_only":
        assert wrapper._q_emb is None and wrapper._q_w
    else:
        assert wrapper._q_emb is not None and not wrapper._q_w


@pytest.mark.parametrize("case_name", ["normsoftmax", "proxynca"])
def test_without_step_pacing(case_name):
    _, ks, _ = _run_sequence(case_name, step_pacing=False, warmup=0, epochs=4)
    # N=3, M=1: nothing until 3 selected steps (6 queued), then all 3 at once
    assert ks == [0] * 6 + [3] * 10


@pytest.mark.parametrize("sizes", [(4, 6, 6, 3), (6, 2, 6, 5)])
def test_changing_batch_sizes(sizes):
    wrapper, ks, _ = _run_sequence("proxyanchor", sizes=sizes, warmup=0, epochs=5,
                                   num_steps=2, step_gap=2)
    assert wrapper._q_emb.shape[2] == 6


def test_step_gap_zero_and_large_n():
    _, ks, _ = _run_sequence("normsoftmax", num_steps=5, step_gap=0, warmup=0, epochs=3)
    assert ks == [0, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5, 5]


def test_staircase():
    torch.manual_seed(0)
    wrapper = MemVir(losses.NormalizedSoftmaxLoss(C, D), num_steps=3, step_gap=2,
                     warmup_epochs=0)
    ks = []
    for _ in range(14):
        wrapper(torch.randn(5, D), torch.randint(0, C, (5,)))
        ks.append(wrapper.num_virtual_steps)
    assert ks == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    assert wrapper.queue_length == 9
    wrapper.reset()
    assert wrapper.queue_length == 0 and wrapper.memory_bytes == 0
    wrapper(torch.randn(5, D), torch.randint(0, C, (5,)))
    assert wrapper.num_virtual_steps == 0 and wrapper.queue_length == 1


def test_warmup_is_plain_loss_and_writes_nothing():
    torch.manual_seed(0)
    loss = losses.ProxyAnchorLoss(C, D)
    wrapper = MemVir(loss, num_steps=2, step_gap=0, warmup_epochs=3)
    for epoch in range(3):
        wrapper.set_epoch(epoch)
        for _ in range(3):
            emb, labels = torch.randn(6, D), torch.randint(0, C, (6,))
            assert torch.equal(wrapper(emb, labels), loss(emb, labels))
            assert wrapper.num_virtual_steps == 0
    assert wrapper.queue_length == 0 and wrapper.memory_bytes == 0
    wrapper.set_epoch(3)
    emb, labels = torch.randn(6, D), torch.randint(0, C, (6,))
    assert torch.equal(wrapper(emb, labels), loss(emb, labels))   # queue starts empty
    assert wrapper.queue_length == 1
    wrapper(torch.randn(6, D), torch.randint(0, C, (6,)))
    assert wrapper.num_virtual_steps == 1


def test_eval_mode_is_plain_loss_and_writes_nothing():
    torch.manual_seed(0)
    loss = losses.NormalizedSoftmaxLoss(C, D)
    wrapper = MemVir(loss, num_steps=4, step_gap=0, warmup_epochs=0)
    for _ in range(3):
        wrapper(torch.randn(6, D), torch.randint(0, C, (6,)))
    wrapper.eval()
    emb, labels = torch.randn(6, D), torch.randint(0, C, (6,))
    assert torch.equal(wrapper(emb, labels), loss(emb, labels))
    assert wrapper.queue_length == 3


def test_unsupported_losses_raise_type_error():
    with pytest.raises(TypeError) as err:
        MemVir(losses.TripletMarginLoss())
    for name in ("NormalizedSoftmaxLoss", "CosFaceLoss", "ArcFaceLoss", "ProxyNCALoss",
                 "ProxyAnchorLoss", "SoftmaxLoss", "CurricularFaceLoss", "SoftTripleLoss"):
        assert name in str(err.value)
    with pytest.raises(TypeError):   # a subclass with another weight layout
        MemVir(losses.SubCenterArcFaceLoss(num_classes=C, embedding_size=D))

    class ArcFaceLoss(torch.nn.Module):  # same name, another class
        pass

    with pytest.raises(TypeError):
        MemVir(ArcFaceLoss())
    assert "ProxyAnchorLoss" in MemVir.supported_losses()


def test_invalid_arguments():
    loss = losses.NormalizedSoftmaxLoss(C, D)
    with pytest.raises(ValueError):
        MemVir(loss, virtual_embeddings=False, virtual_weights=False)
    with pytest.raises(ValueError):
        MemVir(loss, num_steps=0)
    with pytest.raises(ValueError):
        MemVir(loss, step_gap=-1)
    with pytest.raises(ValueError):
        MemVir(loss, storage_dtype="int8")
    with pytest.raises(ValueError):
        MemVir(loss, storage_device="nowhere")
    with pytest.raises(TypeError):
        MemVir(loss, warmup_epochs=0)(torch.randn(4, D), torch.randint(0, C, (4,)), (None,))
    assert MemVir(loss, storage_dtype="bfloat16").storage_dtype == torch.bfloat16


def test_trainable_parameters_are_the_wrapped_losses():
    for case in CASES.values():
        loss = case.make(C, True)
        wrapper = MemVir(loss, num_steps=2, step_gap=1, warmup_epochs=0)
        assert [id(p) for p in wrapper.parameters()] == [id(p) for p in loss.parameters()]
        assert all(not b.requires_grad for b in wrapper.buffers())
    objective = build_objective("memvir+softmax", C, D, {"bias": True})
    assert [id(p) for p in objective.trainable_parameters()] == \
        [id(objective.loss.loss.W), id(objective.loss.loss.b)]


def _training_run(steps: int, resume_at: int | None = None, **params):
    """A plain PyTorch loop: Linear model -> memvir+<loss> objective, Adam on both."""
    torch.manual_seed(0)
    data = torch.randn(40, 6)
    targets = torch.randint(0, C, (40,))
    batches = [(0, 8), (8, 16), (16, 24), (24, 29)]   # last batch is partial
    name = params.pop("name", "memvir+normsoftmax")

    def fresh(seed):
        torch.manual_seed(seed)
        model = torch.nn.Linear(6, D)
        objective = build_objective(name, C, D, {"num_steps": 3, "step_gap": 1,
                                                 "warmup_epochs": 1, **params})
        opt = torch.optim.Adam([*model.parameters(), *objective.trainable_parameters()], lr=0.05)
        return model, objective, opt

    model, objective, opt = fresh(0)
    losses_seen = []
    for step in range(steps):
        if resume_at is not None and step == resume_at:
            buf = io.BytesIO()
            torch.save({"model": model.state_dict(), "objective": objective.state_dict(),
                        "opt": opt.state_dict()}, buf)
            buf.seek(0)
            state = torch.load(buf, weights_only=True)
            model, objective, opt = fresh(123)
            model.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
            opt.load_state_dict(state["opt"])
        epoch, i = divmod(step, len(batches))
        if i == 0:
            objective.set_epoch(epoch)
        lo, hi = batches[i]
        opt.zero_grad()
        value = objective(model(data[lo:hi]), targets[lo:hi])
        value.backward()
        opt.step()
        losses_seen.append((value.item(), objective.loss.num_virtual_steps))
    return losses_seen, model, objective


@pytest.mark.parametrize("name", ["memvir+normsoftmax", "memvir+curricularface",
                                  "memvir+softmax"])
def test_state_dict_round_trip_resumes_exactly(name):
    plain, model_a, obj_a = _training_run(20, name=name)
    resumed, model_b, obj_b = _training_run(20, resume_at=10, name=name)
    assert max(k for _, k in plain) == 3
    assert resumed == plain
    for a, b in zip([*model_a.parameters(), *obj_a.parameters()],
                    [*model_b.parameters(), *obj_b.parameters()]):
        assert torch.equal(a, b)
    assert torch.equal(obj_a.loss._q_emb, obj_b.loss._q_emb)
    assert obj_a.loss._num_pushed == obj_b.loss._num_pushed


def test_state_dict_contents_and_mismatch():
    objective = build_objective("memvir+proxyanchor", C, D,
                                {"num_steps": 2, "step_gap": 1, "warmup_epochs": 0})
    for _ in range(3):
        objective(torch.randn(5, D), torch.randint(0, C, (5,)))
    state = objective.state_dict()
    extra = state["loss._extra_state"]
    assert extra["num_pushed"] == 3 and extra["embeddings"].shape == (2, 2, 5, D)
    assert extra["weights"]["proxies"].shape == (2, 2, C, D)
    empty = build_objective("memvir+proxyanchor", C, D,
                            {"num_steps": 2, "step_gap": 1, "warmup_epochs": 0})
    buf = io.BytesIO()
    torch.save(empty.state_dict(), buf)
    buf.seek(0)
    objective.load_state_dict(torch.load(buf, weights_only=True))   # an empty ring loads too
    assert objective.loss.queue_length == 0 and objective.loss.memory_bytes == 0
    other = build_objective("memvir+proxyanchor", C, D,
                            {"num_steps": 3, "step_gap": 1, "warmup_epochs": 0})
    with pytest.raises(ValueError):
        other.load_state_dict(state)


def test_bfloat16_storage_is_close():
    """Same steps with fp32 and bf16 rings: close values, half the memory."""
    torch.manual_seed(0)
    w32 = MemVir(losses.NormalizedSoftmaxLoss(C, D), num_steps=3, step_gap=1, warmup_epochs=0)
    w16 = MemVir(losses.NormalizedSoftmaxLoss(C, D), num_steps=3, step_gap=1, warmup_epochs=0,
                 storage_dtype=torch.bfloat16)
    w16.loss.load_state_dict(w32.loss.state_dict())
    for _ in range(12):
        emb, labels = torch.randn(6, D), torch.randint(0, C, (6,))
        a, b = w32(emb, labels), w16(emb, labels)
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)
    assert w16._q_emb.dtype == torch.bfloat16 and w16._q_w["W"].dtype == torch.bfloat16
    assert w16.num_virtual_steps == 3
    assert w16.memory_bytes < 0.6 * w32.memory_bytes


def test_cpu_storage_device():
    _, _, default = _run_sequence("proxyanchor", warmup=0, epochs=3)
    wrapper, _, on_cpu = _run_sequence("proxyanchor", warmup=0, epochs=3, storage_device="cpu")
    assert on_cpu == default
    assert wrapper._q_emb.device.type == "cpu"


def test_host_ring_copy_order():
    """The host->GPU gather (contiguous runs + reverse) selects what index_select selects;
    checked on CPU, where the copies are the same calls."""
    wrapper = MemVir(losses.NormalizedSoftmaxLoss(C, D), num_steps=5, step_gap=0)
    ring = torch.arange(5 * 3).reshape(5, 3)
    for q in range(12):
        for k in range(1, 6):
            expected = ring[[(q - j) % 5 for j in range(1, k + 1)]]
            assert torch.equal(wrapper._take_host(ring, k, q, torch.device("cpu")), expected)
            assert torch.equal(wrapper._take(ring, k, q, torch.device("cpu")), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_storage_with_cuda_compute():
    torch.manual_seed(0)
    dev = torch.device("cuda")
    a = MemVir(losses.ProxyAnchorLoss(C, D).to(dev), num_steps=3, step_gap=1, warmup_epochs=0)
    b = MemVir(losses.ProxyAnchorLoss(C, D).to(dev), num_steps=3, step_gap=1, warmup_epochs=0,
               storage_device="cpu")
    b.loss.load_state_dict(a.loss.state_dict())
    for size in [6, 6, 6, 4] * 4:
        emb, labels = torch.randn(size, D, device=dev), torch.randint(0, C, (size,), device=dev)
        torch.testing.assert_close(a(emb, labels), b(emb, labels))
    assert b._q_emb.is_pinned()
    b.load_state_dict(a.state_dict())
    assert b._q_emb.device.type == "cpu"


def test_queue_bytes():
    cars = MemVir.queue_bytes(45, 10, 128, 512, 98, torch.float32)
    assert cars == 495 * (128 * 512 * 4 + 128 * 8 + 98 * 512 * 4)
    assert 215 < cars / 2**20 < 225                                 # spec: ~220 MiB
    sop = MemVir.queue_bytes(45, 10, 128, 512, 11318, torch.float32)
    assert 10.5 < sop / 2**30 < 11.5                                 # spec: ~11 GiB
    sop16 = MemVir.queue_bytes(45, 10, 128, 512, 11318, torch.bfloat16)
    assert sop16 == 495 * (128 * 512 * 2 + 128 * 8 + 11318 * 512 * 2)
    # the ring of a full wrapper occupies exactly that
    wrapper = MemVir(losses.ProxyAnchorLoss(C, D), num_steps=3, step_gap=2, warmup_epochs=0)
    for _ in range(10):
        wrapper(torch.randn(5, D), torch.randint(0, C, (5,)))
    assert wrapper.memory_bytes == MemVir.queue_bytes(3, 2, 5, D, C, torch.float32)
    softmax = MemVir(SoftmaxLoss(C, D, bias=True), num_steps=3, step_gap=2, warmup_epochs=0)
    softmax(torch.randn(5, D), torch.randint(0, C, (5,)))
    assert softmax.memory_bytes == MemVir.queue_bytes(3, 2, 5, D, C, bias=True)


def test_registry_entries():
    names = set(list_methods())
    for base in ("softmax", "normsoftmax", "cosface", "arcface", "proxynca", "proxyanchor",
                 "curricularface", "softtriple"):
        spec = get_method(f"memvir+{base}")
        base_spec = get_method(base)
        assert spec.base == base and spec.family == base_spec.family
        assert spec.m_per_class == base_spec.m_per_class
        for key, value in base_spec.defaults.items():
            assert spec.defaults[key] == value
        assert spec.defaults["warmup_epochs"] == 40 and spec.defaults["step_pacing"] is True
        assert spec.search_space["num_steps"] == ("int", 1, 100)
        assert spec.search_space["step_gap"] == ("int", 0, 30)
        assert spec.search_space["warmup_epochs"] == ("int", 0, 100)
        assert set(base_spec.search_space) <= set(spec.search_space)
        assert spec.has_loss_parameters
        objective = build_objective(f"memvir+{base}", 5, D)
        assert isinstance(objective.loss, MemVir) and objective.miner is None
    assert (get_method("memvir+normsoftmax").defaults["num_steps"],
            get_method("memvir+normsoftmax").defaults["step_gap"]) == (45, 10)
    assert (get_method("memvir+proxynca").defaults["num_steps"],
            get_method("memvir+proxynca").defaults["step_gap"]) == (20, 25)
    assert "curricularface" in names
    with pytest.raises(UserError):
        build_objective("memvir+normsoftmax", 5, D, {"step_gap": -1})
    objective = build_objective("memvir+arcface", 5, D, {"storage_dtype": "bfloat16",
                                                         "margin": 10.0})
    assert objective.loss.storage_dtype == torch.bfloat16
    assert objective.loss.loss.margin == pytest.approx(10.0 * 3.141592653589793 / 180)
    with pytest.raises(ValueError):   # a base with a miner cannot be wrapped
        _components_for("triplet-semihard")(5, D, num_steps=2, step_gap=1, warmup_epochs=0,
                                            step_pacing=True, virtual_embeddings=True,
                                            virtual_weights=True, margin=0.2, squared=False)


def test_objective_set_epoch_reaches_the_wrapper():
    objective = build_objective("memvir+cosface", C, D, {"warmup_epochs": 2, "num_steps": 2,
                                                         "step_gap": 0})
    objective.set_epoch(1)
    objective(torch.randn(4, D), torch.randint(0, C, (4,)))
    assert objective.loss.queue_length == 0
    objective.set_epoch(2)
    objective(torch.randn(4, D), torch.randint(0, C, (4,)))
    objective(torch.randn(4, D), torch.randint(0, C, (4,)))
    assert objective.loss.num_virtual_steps == 1


@pytest.mark.parametrize("base, scheme, attr, axis", [
    ("normsoftmax", "kaiming_uniform_classes", "W", 1),
    ("proxynca", "kaiming_normal", "proxies", 0)])
def test_weight_init_reaches_the_ring_and_virtual_classes(base, scheme, attr, axis):
    """The wrapper reads the loss's (re-initialised) weights each step: the ring holds W_t as
    it was at step t, not a copy taken at construction, and the virtual classes of step t+1 are
    exactly that snapshot (checked against a fresh loss of 2C classes on the concatenation)."""
    c, d = 6, 512
    torch.manual_seed(0)
    obj = build_objective(f"memvir+{base}", c, d, {"weight_init": scheme, "num_steps": 1,
                                                   "step_gap": 0, "warmup_epochs": 0})
    w = getattr(obj.loss.loss, attr)
    norms = (w if axis == 0 else w.t()).detach().norm(dim=1)
    want = math.sqrt(d / (3 * c)) if scheme.endswith("classes") else math.sqrt(2)
    assert norms.mean().item() == pytest.approx(want, rel=0.15)   # not sqrt(d) = 22.6
    opt = torch.optim.SGD(obj.trainable_parameters(), lr=1.0)
    emb1 = torch.nn.functional.normalize(torch.randn(8, d), dim=1)
    lab1 = torch.arange(8) % c
    w_step1 = w.detach().clone()
    opt.zero_grad()
    obj(emb1, lab1).backward()
    opt.step()
    assert not torch.equal(w.detach(), w_step1)                  # the step moved W
    assert torch.equal(obj.loss._q_w[attr][0, 0], w_step1)       # the ring holds W_1
    emb2 = torch.nn.functional.normalize(torch.randn(8, d), dim=1)
    lab2 = torch.arange(8) % c
    value = obj(emb2, lab2)
    assert obj.loss.num_virtual_steps == 1
    ref_loss, _ = get_method(base).components(2 * c, d, **_base_params(base))
    both = torch.cat([w.detach(), w_step1], dim=axis)
    getattr(ref_loss, attr).data.copy_(both)
    ref = ref_loss(torch.cat([emb2, emb1]), torch.cat([lab2, lab1 + c]))
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)


def _base_params(base: str) -> dict:
    """The base loss's own parameters at their registry defaults (for a reference build)."""
    from dmlbench.methods.registry import resolve_params

    p = resolve_params(base)
    for k in ("loss_lr", "loss_weight_decay"):
        p.pop(k, None)
    return p
