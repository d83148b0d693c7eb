"""DAS (methods/das.py): numbers on hand-made batches against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from dmlbench.methods.das import BASES, DAS, DAS_DEFAULTS, DASLoss, _max_kept, das_defaults
from dmlbench.methods.registry import build_objective, get_method, list_methods


def _batch(labels, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(labels), d, generator=g), torch.tensor(labels)


# ---- pure-Python references -----------------------------------------------------------------

def ref_frequency(batches, C, d, K):
    P = np.zeros((C, d), dtype=np.int64)
    for x, y in batches:
        for row, c in zip(x.numpy(), y.tolist()):
            for ch in np.argsort(-row, kind="stable")[:K]:
                P[c, ch] += 1
    return P


def ref_mask(P, K):
    # largest count first, ties to the lower channel index
    return [sorted(range(P.shape[1]), key=lambda ch: (-P[c, ch], ch))[:K] for c in range(len(P))]


class RefBank:
    """Per-class FIFO ring: ordered differences v_a - v_b of members in batch order."""

    def __init__(self, C, Z, d):
        self.Z = Z
        self.bank = np.zeros((C, Z, d), dtype=np.float32)
        self.pos = [0] * C
        self.fill = [0] * C

    def update(self, x, y):
        x = x.numpy().astype(np.float32)
        y = y.tolist()
        for c in sorted(set(y)):
            members = [i for i in range(len(y)) if y[i] == c]
            for a in members:
                for b in members:
                    diff = x[a] - x[b]
                    if not np.any(diff != 0):
                        continue
                    self.bank[c, self.pos[c]] = diff
                    self.pos[c] = (self.pos[c] + 1) % self.Z
                    self.fill[c] = min(self.Z, self.fill[c] + 1)


def assert_bank_equal(das, ref):
    np.testing.assert_array_equal(das.bank.numpy(), ref.bank)
    assert das.bank_pos.tolist() == ref.pos
    assert das.bank_fill.tolist() == ref.fill


# ---- DFS -------------------------------------------------------------------------------------

def test_frequency_counts_and_class_mask_match_hand_count():
    C, d, K = 4, 7, 2
    batches = [_batch([0, 1, 0, 2, 1, 0], d, seed=1), _batch([3, 0, 3, 1], d, seed=2)]
    das = DAS(C, d, num_produce=1, topk=K, use_mts=False)
    for x, y in batches:
        das(x, y)
    P = ref_frequency(batches, C, d, K)
    assert np.array_equal(das.frequency.numpy(), P)
    assert P.sum() == 10 * K                       # one +1 per real row and top-K channel
    assert das.class_mask().tolist() == ref_mask(P, K)
    assert das.class_mask(torch.tensor([2, 0])).tolist() == [ref_mask(P, K)[2], ref_mask(P, K)[0]]


def test_frequency_uses_raw_signed_values_not_abs():
    das = DAS(1, 4, num_produce=1, topk=1, use_mts=False)
    das(torch.tensor([[-9.0, 1.0, 0.5, -0.1]]), torch.tensor([0]))
    assert das.frequency.tolist() == [[0, 1, 0, 0]]


def test_dfs_only_changes_mask_channels_by_factors_in_range():
    C, d, K, T, lo, hi = 3, 10, 3, 4, 0.5, 2.0
    x, y = _batch([0, 1, 2, 0, 1, 2], d, seed=3)
    das = DAS(C, d, num_produce=T, topk=K, scale_range=(lo, hi), normalize=False, use_mts=False)
    torch.manual_seed(0)
    out, lab = das(x, y)
    assert out.shape == (len(y) * (T + 1), d)
    assert torch.equal(out[: len(y)], x) and torch.equal(lab, y.repeat(T + 1))
    mask = das.class_mask(y)                       # masks after this batch's update
    gammas = []
    for t in range(T):
        gen = out[len(y) * (t + 1): len(y) * (t + 2)]
        for i in range(len(y)):
            on = torch.zeros(d, dtype=torch.bool)
            on[mask[i]] = True
            assert torch.equal(gen[i][~on], x[i][~on])
            g = gen[i][on] / x[i][on]
            assert torch.all(g >= lo - 1e-6) and torch.all(g < hi + 1e-6)
            gammas.append(g)
    g = torch.stack(gammas)
    assert len(torch.unique(g)) == g.numel()       # fresh factor per channel and per row


# ---- MTS -------------------------------------------------------------------------------------

def test_bank_fifo_matches_reference_over_batches():
    C, d, Z = 4, 5, 4
    x3, y3 = _batch([0, 0, 1, 2, 2, 2, 3, 1], d, seed=5)
    x3[4] = x3[3]                                  # duplicate rows: their differences are zero
    x5 = torch.zeros(2, d)
    x5[0, 0] = -0.0                                # -0.0 and +0.0 are equal rows
    batches = [
        _batch([0, 1, 0, 2], d, seed=4),           # 2 diffs for class 0, none for 1 and 2
        (x3, y3),
        _batch([2, 2, 2, 2, 0, 3, 3, 0, 0], d, seed=6),   # class 2: 12 diffs > Z
        _batch([1, 1, 1], d, seed=7),
        (x5, torch.tensor([3, 3])),
    ]
    das = DAS(C, d, num_produce=2, bank_size=Z, use_dfs=False)
    ref = RefBank(C, Z, d)
    for x, y in batches:
        das(x, y)
        ref.update(x, y)
        assert_bank_equal(das, ref)
    # by hand: class 0 gets 2 + 2 + 6 differences, class 1 gets 2 + 6, class 2 gets 4 (two of
    # the six are zero: duplicates) + 12, class 3 gets 2 (the -0.0 / +0.0 pair adds none)
    assert ref.fill == [4, 4, 4, 2] and ref.pos == [2, 0, 0, 2]


@pytest.mark.parametrize("sizes,Z", [([4, 4, 4, 4], 10), ([3] * 5, 6), ([5, 1, 2, 7], 3),
                                     ([2] * 8, 1), ([16], 50)])
def test_bank_fifo_at_the_static_list_bound(sizes, Z):
    labels = [c for c, m in enumerate(sizes) for _ in range(m)]
    rng = np.random.default_rng(len(labels) + Z)
    labels = [labels[i] for i in rng.permutation(len(labels))]
    kept = sum(min(Z, m * (m - 1)) for m in sizes)
    assert kept <= _max_kept(len(labels), Z)
    das = DAS(len(sizes), 6, num_produce=1, bank_size=Z, use_dfs=False)
    ref = RefBank(len(sizes), Z, 6)
    for seed in range(2):
        x, y = _batch(labels, 6, seed=seed)
        das(x, y)
        ref.update(x, y)
    assert_bank_equal(das, ref)


def test_max_kept_bounds_brute_force():
    def partitions(n, largest):
        if n == 0:
            yield []
            return
        for m in range(min(n, largest), 0, -1):
            for rest in partitions(n - m, m):
                yield [m] + rest
    for B in range(1, 13):
        for Z in (1, 2, 3, 6, 10, 50):
            best = max(sum(min(Z, m * (m - 1)) for m in p) for p in partitions(B, B))
            assert best <= _max_kept(B, Z)


def test_mts_only_shift_is_a_filled_bank_row_times_shift_scale():
    C, d, Z, T, r_b = 3, 6, 10, 200, 0.25
    x, y = _batch([0, 0, 0, 1, 1, 2], d, seed=8)
    das = DAS(C, d, num_produce=T, bank_size=Z, shift_scale=r_b, normalize=False, use_dfs=False)
    torch.manual_seed(1)
    out, _ = das(x, y)
    ref = RefBank(C, Z, d)
    ref.update(x, y)
    assert_bank_equal(das, ref)                    # the update ran before generation
    scale = torch.tensor(r_b)
    used = {c: set() for c in range(C)}
    for t in range(T):
        gen = out[len(y) * (t + 1): len(y) * (t + 2)]
        for i, c in enumerate(y.tolist()):
            if ref.fill[c] == 0:                   # empty bank: zero shift
                assert torch.equal(gen[i], x[i])
                continue
            hits = [z for z in range(Z) if torch.equal(gen[i], x[i] + das.bank[c, z] * scale)]
            assert hits, (t, i)
            assert all(z < ref.fill[c] and np.any(ref.bank[c, z] != 0) for z in hits)
            used[c].update(hits)
    assert used[0] == set(range(6)) and used[1] == {0, 1} and used[2] == set()


def test_uniform_draw_over_a_wrapped_ring():
    # class 0 gets 6 differences per batch into Z=4: a full ring whose pos is not 0
    C, d, Z, T = 1, 3, 4, 400
    das = DAS(C, d, num_produce=T, bank_size=Z, shift_scale=1.0, normalize=False, use_dfs=False)
    x, y = _batch([0, 0, 0], d, seed=9)
    torch.manual_seed(2)
    out, _ = das(x, y)
    assert das.bank_pos.tolist() == [2] and das.bank_fill.tolist() == [4]
    gen = out[3:].reshape(T, 3, d)
    shifts = gen - x.unsqueeze(0)                  # T x 3 x d
    counts = [0] * Z
    for z in range(Z):
        close = torch.isclose(shifts, das.bank[0, z].expand_as(shifts), atol=1e-6).all(-1)
        counts[z] = int(close.sum())
    assert sum(counts) == 3 * T
    assert min(counts) > 3 * T / Z * 0.7           # every slot drawn, roughly uniformly


def test_dfs_and_mts_scale_then_shift_then_normalise():
    C, d, K, T = 2, 8, 2, 2
    x, y = _batch([0, 0, 1, 1], d, seed=10)
    das = DAS(C, d, num_produce=T, topk=K, scale_range=(0.5, 2.0), shift_scale=0.3)
    state = {k: v.clone() for k, v in das.state_dict().items()}
    torch.manual_seed(3)
    out, _ = das(x, y)
    # replay the draws by hand from the same seed and the same pre-step state
    ref = DAS(C, d, num_produce=T, topk=K, scale_range=(0.5, 2.0), shift_scale=0.3)
    ref.load_state_dict(state)
    torch.manual_seed(3)
    ref._update_frequency(x, y)
    mask = ref.class_mask(y)
    gamma = torch.rand(T, 4, K) * 1.5 + 0.5
    ref._update_bank(x, y)
    u = torch.rand(T, 4)
    for t in range(T):
        for i, c in enumerate(y.tolist()):
            fill, pos = int(ref.bank_fill[c]), int(ref.bank_pos[c])
            k = min(int(math.floor(float(u[t, i]) * fill)), fill - 1)
            z = (pos - fill + k) % ref.bank_size if fill else 0
            s = torch.ones(d)
            s[mask[i]] = gamma[t, i]
            v = s * x[i] + (ref.bank[c, z] * 0.3 if fill else 0)
            assert torch.allclose(out[4 * (t + 1) + i], v / v.norm(), atol=1e-6)
    assert torch.allclose(out[4:].norm(dim=1), torch.ones(4 * T))


# ---- gradients, modes, errors, state -------------------------------------------------------

@pytest.mark.parametrize("detach", [True, False])
def test_detach_decides_gradient_through_generated_rows(detach):
    x, y = _batch([0, 0, 1, 1], 6, seed=11)
    x.requires_grad_(True)
    das = DAS(2, 6, num_produce=2, topk=2, shift_scale=0.1, detach=detach)
    out, _ = das(x, y)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    through_real = w[:4]
    if detach:
        assert torch.equal(x.grad, through_real)
    else:
        assert not torch.allclose(x.grad, through_real)
        assert torch.all(torch.isfinite(x.grad))


def test_eval_mode_and_zero_produce_return_inputs_unchanged():
    x, y = _batch([0, 1, 0], 5, seed=12)
    das = DAS(2, 5, num_produce=3, topk=2).eval()
    out, lab = das(x, y)
    assert out is x and lab is y
    das0 = DAS(2, 5, num_produce=0, topk=2)
    out, lab = das0(x, y)
    assert out is x and lab is y
    for m in (das, das0):
        assert m.frequency.sum() == 0 and m.bank_fill.sum() == 0


@pytest.mark.parametrize("labels", [[0, 1, 2], [0, -1, 1]])
def test_label_out_of_range_raises_clear_error(labels):
    das = DAS(2, 4, num_produce=1, topk=1)
    with pytest.raises(ValueError, match=r"0\.\.1 \(num_classes=2\).*map"):
        das(torch.randn(3, 4), torch.tensor(labels))
    with pytest.raises(ValueError, match="integer"):
        das(torch.randn(3, 4), torch.tensor([0.0, 1.0, 1.0]))
    assert das.frequency.sum() == 0


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="topk"):
        DAS(2, 4, topk=5)
    with pytest.raises(ValueError, match="scale_range"):
        DAS(2, 4, topk=1, scale_range=(1.1, 0.9))
    with pytest.raises(ValueError, match="pair-based"):
        DASLoss(losses.ProxyAnchorLoss(2, 4), DAS(2, 4, topk=1))


def test_state_dict_round_trip_restores_state_and_future_outputs():
    C, d = 5, 8
    obj = DASLoss(losses.ContrastiveLoss(), DAS(C, d, num_produce=2, topk=3, bank_size=4,
                                                 shift_scale=0.1))
    for seed in range(3):
        obj(*_batch([0, 0, 1, 1, 2, 2, 3, 0], d, seed=seed))
    sd = obj.state_dict()
    assert {"das.frequency", "das.bank", "das.bank_pos", "das.bank_fill"} <= set(sd)
    sd = {k: v.clone() for k, v in sd.items()}
    other = DASLoss(losses.ContrastiveLoss(), DAS(C, d, num_produce=2, topk=3, bank_size=4,
                                                   shift_scale=0.1))
    other.load_state_dict(sd)
    for name in ("frequency", "bank", "bank_pos", "bank_fill"):
        assert torch.equal(getattr(other.das, name), getattr(obj.das, name))
    assert obj.das.bank_fill.sum() > 0 and obj.das.bank_pos.sum() > 0
    x, y = _batch([0, 1, 1, 0, 4, 4], d, seed=9)
    torch.manual_seed(7)
    a, _ = obj.das(x, y)
    torch.manual_seed(7)
    b, _ = other.das(x, y)
    assert torch.equal(a, b)
    for k, v in obj.state_dict().items():
        assert torch.equal(v, other.state_dict()[k])


def test_step_reads_no_tensor_data_on_the_host():
    # meta tensors have no data: any .item(), bool(), nonzero or data-dependent shape raises
    das = DAS(10, 16, num_produce=3, topk=3, bank_size=4).to("meta")
    x = torch.empty(12, 16, device="meta", requires_grad=True)
    y = torch.empty(12, dtype=torch.long, device="meta")
    out, lab = das(x, y)
    assert out.shape == (48, 16) and lab.shape == (48,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_does_not_synchronise():
    das = DAS(10, 16, num_produce=3, topk=3, bank_size=4).cuda()
    x, y = _batch([0, 0, 1, 1, 2, 2, 3, 9], 16, seed=15)
    x, y = x.cuda(), y.cuda()
    das(x, y)
    torch.cuda.set_sync_debug_mode("error")
    try:
        das(x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = RefBank(10, 4, 16)
    ref.update(x.cpu(), y.cpu())
    ref.update(x.cpu(), y.cpu())
    np.testing.assert_array_equal(das.bank.cpu().numpy(), ref.bank)


def test_half_precision_embeddings():
    x, y = _batch([0, 0, 1, 1], 8, seed=16)
    x = x.bfloat16().requires_grad_(True)
    das = DAS(2, 8, num_produce=2, topk=2, detach=False)
    out, _ = das(x, y)
    assert out.dtype == torch.bfloat16 and das.bank.dtype == torch.float32
    out.float().sum().backward()
    assert torch.all(torch.isfinite(x.grad.float()))
    ref = RefBank(2, 10, 8)
    ref.update(x.detach().float(), y)
    assert_bank_equal(das, ref)


# ---- DASLoss and the registry ----------------------------------------------------------------

def test_das_loss_is_loss_over_all_rows_plus_aux_on_real_rows():
    C, d = 6, 16
    x, y = _batch([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5], d, seed=13)
    x = F.normalize(x, dim=1)
    loss, miner = losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner(0.1)

    def fresh(aux):
        return DASLoss(loss, DAS(C, d, num_produce=2, topk=4, shift_scale=0.1), miner=miner,
                       aux_weight=aux)
    torch.manual_seed(5)
    plain = fresh(0.0)(x, y)
    torch.manual_seed(5)
    with_aux = fresh(0.5)(x, y)
    torch.manual_seed(5)
    emb_all, lab_all = DAS(C, d, num_produce=2, topk=4, shift_scale=0.1)(x, y)
    assert torch.allclose(plain, loss(emb_all, lab_all, miner(emb_all, lab_all)), atol=0, rtol=0)
    real = loss(x, y, miner(x, y))
    assert real > 0
    assert torch.allclose(with_aux - plain, 0.5 * real, rtol=1e-6, atol=1e-7)


class _RecordingMiner(miners.MultiSimilarityMiner):
    sizes: list

    def forward(self, embeddings, labels, *args):
        self.sizes.append(len(embeddings))
        return super().forward(embeddings, labels, *args)


def test_miner_sees_generated_rows_and_aux_reruns_it_on_real_rows():
    miner = _RecordingMiner()
    miner.sizes = []
    obj = DASLoss(losses.TripletMarginLoss(), DAS(3, 8, num_produce=3, topk=2), miner=miner,
                  aux_weight=1.0)
    obj(*_batch([0, 0, 1, 1, 2, 2], 8, seed=14))
    assert miner.sizes == [24, 6]
    # an anchor's own generated copies are among its positives (only i itself is excluded)
    _, lab = obj.das(*_batch([0, 0, 1, 1, 2, 2], 8, seed=14))
    a1, p, _, _ = lmu.get_all_pairs_indices(lab)
    pos0 = set(p[a1 == 0].tolist())
    assert {6, 12, 18} <= pos0 and 0 not in pos0


def test_memory_bytes_and_reset():
    das = DAS(7, 12, num_produce=1, topk=2, bank_size=5)
    assert das.memory_bytes == 7 * 5 * 12 * 4 + 7 * 12 * 8 + 2 * 7 * 8
    das(*_batch([0, 0, 3, 3], 12, seed=17))
    assert das.frequency.sum() > 0 and das.bank_fill.sum() == 4
    das.reset_memory()
    assert das.frequency.sum() == 0 and das.bank.abs().sum() == 0 and das.bank_fill.sum() == 0


def test_registry_names_defaults_and_search_space():
    names = [m for m in list_methods() if "+das" in m]
    assert sorted(names) == sorted(f"{b}+{v}" for b in BASES for v in ("das", "das-dfs", "das-mts"))
    for b in BASES:
        base = get_method(b)
        for v in ("das", "das-dfs", "das-mts"):
            spec = get_method(f"{b}+{v}")
            assert spec.base == b and spec.family == base.family
            assert spec.m_per_class == max(2, base.m_per_class)
            assert spec.defaults == {**base.defaults, **DAS_DEFAULTS}
            assert set(base.search_space) < set(spec.search_space)
        space = get_method(f"{b}+das").search_space
        assert space["num_produce"] == ("int", 1, 5) and space["topk"] == ("int", 1, 32)
        assert space["bank_size"] == ("int", 1, 50)
        assert space["scale_radius"] == ("log", 1e-3, 1.0)
        assert space["shift_scale"] == ("log", 1e-3, 1.0)
    assert DAS_DEFAULTS["num_produce"] == 3 and DAS_DEFAULTS["topk"] == 4
    assert das_defaults("sop", "ms")["scale_lo"] == 0.5 and not das_defaults("sop", "ms")["detach"]
    assert das_defaults("sop", "triplet-distance")["aux_weight"] == 1.0
    assert das_defaults("cars", "ms") == DAS_DEFAULTS


def test_ablation_names_switch_modules_and_scale_radius():
    dfs = build_objective("ms+das-dfs", 4, 8).loss.das
    mts = build_objective("ms+das-mts", 4, 8).loss.das
    both = build_objective("ms+das", 4, 8, {"scale_radius": 0.2, "num_produce": 2}).loss.das
    assert (dfs.use_dfs, dfs.use_mts, mts.use_dfs, mts.use_mts) == (True, False, False, True)
    assert both.scale_range == pytest.approx((0.8, 1.2)) and both.num_produce == 2
    assert build_objective("ms+das", 4, 8).loss.das.scale_range == (0.99, 1.01)


@pytest.mark.parametrize("name", [f"{b}+das" for b in BASES] + ["margin+das-dfs",
                                                                 "triplet-distance+das-mts"])
def test_every_base_trains_with_das(name):
    C, d = 8, 16
    torch.manual_seed(0)
    obj = build_objective(name, C, d, {"aux_weight": 0.5} if "triplet" in name else None)
    trunk = torch.nn.Linear(12, d)
    labels = torch.arange(C).repeat_interleave(2)
    feats = torch.randn(len(labels), 12)
    params = list(trunk.parameters()) + obj.trainable_parameters()
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        value = obj(F.normalize(trunk(feats), dim=1), labels)
        assert value.dim() == 0 and torch.isfinite(value)
        value.backward()
        assert all(torch.all(torch.isfinite(p.grad)) for p in trunk.parameters())
        opt.step()
    das = obj.loss.das
    # 2 steps: top-4 counts of every real row; 2 differences per class (2 members) per step
    assert int(das.frequency.sum()) == (2 * len(labels) * 4 if das.use_dfs else 0)
    assert das.bank_fill.tolist() == [4 if das.use_mts else 0] * C


def test_authors_per_dataset_settings():
    """The authors' table2.sh (defaults from scripts/parameters.py: scale 0.5-2.0, r_b 0.01)."""
    for ds in ("cub", "cars", "cars196"):
        for base in ("genlifted", "npair"):   # `--das_not_normalize`, CUB/CARS settings else
            assert das_defaults(ds, base) == {**DAS_DEFAULTS, "normalize": False}
        assert das_defaults(ds, "margin") == DAS_DEFAULTS
        assert das_defaults(ds, "ms+miner") == DAS_DEFAULTS
    # margin + DAS on SOP: `--produce_type DAS` with every default
    margin = das_defaults("sop", "margin")
    assert (margin["scale_lo"], margin["scale_hi"], margin["shift_scale"], margin["detach"],
            margin["normalize"]) == (0.5, 2.0, 0.01, False, True)
    for base in ("genlifted", "npair"):
        got = das_defaults("sop", base)
        assert (got["scale_lo"], got["scale_hi"], got["shift_scale"], got["detach"],
                got["normalize"]) == (0.99, 1.01, 0.1, False, False)
    assert das_defaults("sop", "ms+miner") == das_defaults("sop", "ms")
    assert das_defaults("sop", "ms+miner")["shift_scale"] == 0.1


def test_not_normalised_generation_keeps_raw_scale():
    """normalize=False: generated rows are s * v + r_b * t, not projected to the sphere."""
    C, d = 3, 8
    torch.manual_seed(0)
    emb = torch.randn(6, d) * 5.0          # a raw (unnormalised) model output
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    das = DAS(C, d, num_produce=2, topk=2, scale_range=(1.0, 1.0), shift_scale=0.0,
              normalize=False).train()
    out, lab = das(emb, labels)
    assert torch.allclose(out[6:], emb.repeat(2, 1))   # scale 1, no shift: the raw rows
    normed = DAS(C, d, num_produce=2, topk=2, scale_range=(1.0, 1.0), shift_scale=0.0).train()
    out, _ = normed(emb, labels)
    assert torch.allclose(out[6:].norm(dim=1), torch.ones(12))
    obj = build_objective("genlifted+das", C, d, das_defaults("cub", "genlifted"))
    assert obj.loss.das.normalize is False and obj.loss.das.detach is True


def test_ms_miner_base_keeps_its_miner_under_das():
    obj = build_objective("ms+miner+das", 4, 8)
    assert obj.loss.miner is not None and get_method("ms+miner+das").base == "ms+miner"
    assert build_objective("ms+das", 4, 8).loss.miner is None
