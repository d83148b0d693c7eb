"""MemVir (Ko et al., ICCV 2021): memory-based virtual classes as a wrapper over a
classification / proxy loss (specs/memvir.md).

`MemVir(loss, num_steps=N, step_gap=M, warmup_epochs=E)` keeps the last N*(M+1) training steps
(batch embeddings, labels and the loss's class weights, detached) in a preallocated ring and
adds the selected past steps to each step's loss as extra classes. Registers `memvir+<loss>`
for every supported registry loss.

One concern, the MemVir wrapper and its ring state; over 400 lines because the ring, its
checkpointed state and the virtual-class assembly are one class that must stay consistent.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.losses.base_loss_wrapper import BaseLossWrapper

from dmlbench.methods.curricularface import CurricularFaceLoss
from dmlbench.methods.losses import SoftmaxLoss
from dmlbench.methods.registry import MethodSpec, get_method, register

_MISSING = object()


@dataclass(frozen=True)
class _Layout:
    """Where a supported loss keeps its class weights."""

    params: tuple[tuple[str, int], ...]   # (parameter name, class axis)
    proxy_labels: bool = False            # ProxyNCA keeps arange(num_classes) as an attribute


_W = _Layout(params=(("W", 1),))
_PROXIES = _Layout(params=(("proxies", 0),))

_LAYOUTS: dict[type, _Layout] = {
    SoftmaxLoss: _Layout(params=(("W", 1), ("b", 0))),
    pml_losses.NormalizedSoftmaxLoss: _W,
    pml_losses.CosFaceLoss: _W,
    pml_losses.ArcFaceLoss: _W,
    pml_losses.LargeMarginSoftmaxLoss: _W,
    pml_losses.SphereFaceLoss: _W,
    CurricularFaceLoss: _W,
    pml_losses.ProxyNCALoss: _Layout(params=(("proxies", 0),), proxy_labels=True),
    pml_losses.ProxyAnchorLoss: _PROXIES,
    pml_losses.SoftTripleLoss: _Layout(params=(("fc", 1),)),
}

_DTYPES = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16, "float64": torch.float64}


def _as_dtype(value: Any) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in _DTYPES:
        return _DTYPES[value.removeprefix("torch.")]
    raise ValueError(f"storage_dtype={value!r} is invalid; use None or one of {sorted(_DTYPES)}")


def _nonneg_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is invalid; it must be an integer >= {low}")
    return value


class MemVir(BaseLossWrapper):
    """Memory-based virtual classes around a loss with class weights.

    After warm-up (`set_epoch(e)` with e >= warmup_epochs, 0-indexed) and in training mode,
    each call at step t selects the past steps t-(M+1), ..., t-k(M+1), newest first, with
    k = min(N, floor(queue length / (M+1))) (or, with step_pacing=False, k = N once N selected
    steps exist and 0 before). It then calls the wrapped loss on
      - weights [W_t, W_{t-(M+1)}, ..., W_{t-k(M+1)}] concatenated along the class axis, i.e.
        C*(1+k) classes (class c of the j-th virtual step is class c + j*C; SoftTriple keeps its
        centers grouped per class, SoftmaxLoss's bias is concatenated likewise);
      - embeddings [E_t, E_{t-(M+1)}, ...] along the batch axis, labels of the j-th virtual step
        offset by j*C;
    then pushes (E_t, labels_t, W_t), detached, into the ring. Virtual tensors are constants:
    gradients reach the current embeddings and the current weights only. The class-count
    attributes the loss reads (`num_classes`, ProxyNCA's `proxy_labels`) are set to C*(1+k) for
    the call; a weight regulariser sees the current weights only, an embedding regulariser and
    any running state of the loss (CurricularFace's t) see the concatenated batch, exactly as
    the same loss called on the concatenated inputs would. With k = 0 it is the plain loss.
    During warm-up or in eval mode the plain loss is returned and the ring is neither read
    nor written.

    Ablations (paper Fig. 3 / supplementary D.6):
      - virtual_embeddings=False ("weights only"): the k virtual weight sets are added as
        C*k extra classes with no samples (negatives only); the batch is the current one.
      - virtual_weights=False ("embeddings only"): no class is added (C classes); the past
        embeddings join the batch as extra samples of their ORIGINAL classes (no label offset),
        since a virtual embedding without its virtual weight has no class of its own.
    Both False is refused (that is the plain loss).

    Storage: `storage_dtype` (e.g. torch.bfloat16) stores embeddings and weights in that dtype
    and casts them back to the compute dtype on read. `storage_device` ("cpu") keeps the ring
    there; with CUDA compute it is pinned and the selected slots are copied to the GPU with
    non_blocking copies on the compute stream (no host synchronisation). Default: the device of
    the first embeddings. Batches smaller than the ring's batch capacity (last partial batch)
    are kept with their true length; a larger batch grows the capacity.

    The ring, slot lengths, step counter and epoch travel in `state_dict()` (nn.Module extra
    state), so a parent module's state_dict carries them.
    """

    def __init__(self, loss: torch.nn.Module, num_steps: int = 45, step_gap: int = 10,
                 warmup_epochs: int = 40, step_pacing: bool = True,
                 virtual_embeddings: bool = True, virtual_weights: bool = True,
                 storage_dtype: torch.dtype | str | None = None,
                 storage_device: torch.device | str | None = None) -> None:
        super().__init__(loss=loss)
        if type(loss) not in _LAYOUTS:
            # same class name from another module
            raise TypeError(self._unsupported_message(type(loss)))
        self.loss = loss
        self.num_steps = _nonneg_int("num_steps", num_steps, 1)
        self.step_gap = _nonneg_int("step_gap", step_gap, 0)
        self.warmup_epochs = _nonneg_int("warmup_epochs", warmup_epochs, 0)
        for name, flag in (("step_pacing", step_pacing), ("virtual_embeddings", virtual_embeddings),
                           ("virtual_weights", virtual_weights)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name}={flag!r} is invalid; it must be true or false")
        if not (virtual_embeddings or virtual_weights):
            raise ValueError("virtual_embeddings and virtual_weights cannot both be false "
                             "(that is the plain loss)")
        self.step_pacing = step_pacing
        self.virtual_embeddings = virtual_embeddings
        self.virtual_weights = virtual_weights
        self.storage_dtype = _as_dtype(storage_dtype)
        try:
            self.storage_device = None if storage_device is None else torch.device(storage_device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"storage_device={storage_device!r} is invalid: {e}") from e

        layout = _LAYOUTS[type(loss)]
        self._params = tuple((n, a) for n, a in layout.params
                             if loss._parameters.get(n) is not None)
        self._proxy_labels = layout.proxy_labels
        self._group = int(getattr(loss, "centers_per_class", 1)) \
            if isinstance(loss, pml_losses.SoftTripleLoss) else 1
        first_name, first_axis = self._params[0]
        self.num_classes = loss._parameters[first_name].shape[first_axis] // self._group
        self._epoch = 0
        self._k = 0
        self._cache: dict[str, torch.Tensor] = {}
        self.reset()

    # ---- PML wrapper protocol --------------------------------------------------------------

    @staticmethod
    def supported_losses() -> list[str]:
        return sorted(cls.__name__ for cls in _LAYOUTS)

    @classmethod
    def check_loss_support(cls, loss_name: str) -> None:
        if loss_name not in cls.supported_losses():
            raise TypeError(cls._unsupported_message(loss_name))

    @classmethod
    def _unsupported_message(cls, loss: Any) -> str:
        name = loss if isinstance(loss, str) else f"{loss.__module__}.{loss.__qualname__}"
        return (f"MemVir does not support {name}; supported losses: "
                f"{', '.join(cls.supported_losses())}")

    # ---- public state ----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Steps the ring holds: N * (M + 1)."""
        return self.num_steps * (self.step_gap + 1)

    @property
    def queue_length(self) -> int:
        """Steps currently held (0 .. N*(M+1))."""
        return min(self._num_pushed, self.capacity)

    @property
    def num_virtual_steps(self) -> int:
        """k used at the last call (0 .. N)."""
        return self._k

    def stats(self) -> dict[str, float]:
        """Training signals of the last step, from plain numbers (no device work):
        `memvir_k`, the virtual steps in use (0..N), and `memvir_ring_fill`, the share of the
        ring's N*(M+1) step slots that hold a step (0..1)."""
        return {"memvir_k": float(self._k), "memvir_ring_fill": self.queue_length / self.capacity}

    @property
    def memory_bytes(self) -> int:
        """Bytes the ring occupies now."""
        tensors = [self._q_emb, self._q_lab, *self._q_w.values()]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def set_epoch(self, epoch: int) -> None:
        """The 0-indexed epoch that starts; MemVir is off while epoch < warmup_epochs."""
        self._epoch = int(epoch)

    def reset(self) -> None:
        """Empty the ring (freeing its memory) and restart the step counter."""
        self._q_emb: torch.Tensor | None = None      # (M+1, N, B, d)
        self._q_lab: torch.Tensor | None = None      # (M+1, N, B)
        self._q_w: dict[str, torch.Tensor] = {}      # name -> (M+1, N, *param shape)
        self._lens: list[int] = [0] * self.capacity  # true batch length of each slot
        self._num_pushed = 0
        self._k = 0

    reset_queue = reset

    @staticmethod
    def queue_bytes(num_steps: int, step_gap: int, batch_size: int, embedding_size: int,
                    num_classes: int, dtype: torch.dtype = torch.float32, *,
                    centers_per_class: int = 1, bias: bool = False) -> int:
        """Bytes of a full ring: N*(M+1) x (B x d embeddings + B int64 labels + class weights)."""
        item = torch.empty((), dtype=dtype).element_size()
        per_step = (batch_size * embedding_size * item + batch_size * 8
                    + num_classes * centers_per_class * embedding_size * item
                    + (num_classes * item if bias else 0))
        return num_steps * (step_gap + 1) * per_step

    # ---- the step --------------------------------------------------------------------------

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: Any = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise TypeError("MemVir takes no indices_tuple: the wrapped losses use no miner")
        if not self.training or self._epoch < self.warmup_epochs:
            self._k = 0
            return self.loss(embeddings, labels)
        labels = labels.to(embeddings.device)
        self._to_compute_device(embeddings.device)
        k = self._select_k()
        if k == 0:
            value = self.loss(embeddings, labels)
        else:
            value = self._virtual_loss(embeddings, labels, k)
        self._push(embeddings, labels)
        self._k = k
        return value

    def _select_k(self) -> int:
        available = self.queue_length // (self.step_gap + 1)
        if self.step_pacing:
            return min(self.num_steps, available)
        return self.num_steps if available >= self.num_steps else 0

    def _virtual_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
        device, dtype = embeddings.device, embeddings.dtype
        if self.virtual_embeddings:
            v_emb, v_lab = self._gather_batch(k, device, dtype)
            embeddings = torch.cat([embeddings, v_emb])
            labels = torch.cat([labels, v_lab.to(labels.dtype)])
        if not self.virtual_weights:
            return self.loss(embeddings, labels)
        overrides = {}
        for name, axis in self._params:
            p = self.loss._parameters[name]
            cast = dtype if p.is_floating_point() else p.dtype
            past = self._gather_weight(name, k, device, cast)          # (k, *p.shape)
            stacked = torch.cat([p.to(cast).unsqueeze(0), past])       # (1+k, *p.shape)
            shape = list(p.shape)
            shape[axis] *= 1 + k
            # class axis outermost within its dim: class c of step j -> index j*C + c
            overrides[name] = stacked.movedim(0, axis).reshape(shape)
        with self._swapped(overrides, self.num_classes * (1 + k), device):
            return self.loss(embeddings, labels)

    @contextlib.contextmanager
    def _swapped(self, overrides: dict[str, torch.Tensor], num_classes: int,
                 device: torch.device) -> Iterator[None]:
        """Temporarily give the loss the concatenated weights and class count."""
        loss = self.loss
        saved_params = {n: loss._parameters[n] for n in overrides}
        saved_attrs = {n: loss.__dict__.get(n, _MISSING) for n in ("num_classes", "proxy_labels")}
        patched_reg = loss.weight_regularizer is not None
        try:
            for n, t in overrides.items():
                loss._parameters[n] = t
            loss.__dict__["num_classes"] = num_classes
            if self._proxy_labels:
                loss.__dict__["proxy_labels"] = self._arange(device)[:num_classes]
            if patched_reg:
                # the regulariser sees the current weights only (first C*g rows, class-first)
                original = loss.add_weight_regularization_to_loss_dict
                rows = self.num_classes * self._group
                loss.__dict__["add_weight_regularization_to_loss_dict"] = \
                    lambda loss_dict, weights: original(loss_dict, weights[:rows])
            yield
        finally:
            loss._parameters.update(saved_params)
            for n, v in saved_attrs.items():
                if v is _MISSING:
                    loss.__dict__.pop(n, None)
                else:
                    loss.__dict__[n] = v
            if patched_reg:
                loss.__dict__.pop("add_weight_regularization_to_loss_dict", None)

    # ---- ring buffer -----------------------------------------------------------------------
    # Step number s (0-based since reset) lives in slot (s % (M+1), (s // (M+1)) % N). The
    # steps selected at step t = s + j(M+1) all share the residue r = t % (M+1) and occupy the
    # rows (t // (M+1) - j) % N, j = 1..k, of ring[r]: a cyclic run of k rows.

    def _cached(self, key: str, device: torch.device, make) -> torch.Tensor:
        t = self._cache.get(key)
        if t is None or t.device != device:
            t = make().to(device)
            self._cache[key] = t
        return t

    def _offsets(self, device: torch.device) -> torch.Tensor:
        """(N,) label offsets j*C for j = 1..N."""
        return self._cached("offsets", device,
                            lambda: torch.arange(1, self.num_steps + 1) * self.num_classes)

    def _arange(self, device: torch.device) -> torch.Tensor:
        return self._cached("arange", device,
                            lambda: torch.arange(self.num_classes * (1 + self.num_steps)))

    def _rows(self, device: torch.device) -> torch.Tensor:
        """(N, N): row q0 lists the ring rows (q0 - j) % N, j = 1..N (newest first)."""
        n = self.num_steps
        return self._cached("rows", device, lambda: (torch.arange(n).unsqueeze(1)
                                                     - torch.arange(1, n + 1)) % n)

    def _reverse(self, device: torch.device) -> torch.Tensor:
        return self._cached("reverse", device, lambda: torch.arange(self.num_steps - 1, -1, -1))

    def _batch_capacity(self) -> int:
        return 0 if self._q_emb is None else self._q_emb.shape[2]

    def _take(self, ring_r: torch.Tensor, k: int, q: int, device: torch.device) -> torch.Tensor:
        """Rows (q-1, ..., q-k) % N of ring_r (shape (N, ...)), newest first, on `device`."""
        if ring_r.device.type != "cpu" or device.type == "cpu":
            out = ring_r.index_select(0, self._rows(ring_r.device)[q % self.num_steps, :k])
            return out.to(device)
        return self._take_host(ring_r, k, q, device)

    def _take_host(self, ring_r: torch.Tensor, k: int, q: int,
                   device: torch.device) -> torch.Tensor:
        """`_take` from a pinned host ring: 1 or 2 contiguous async copies of the cyclic run of
        rows (oldest first), reversed on the device; all on the compute stream, no host sync."""
        n = self.num_steps
        out = torch.empty((k, *ring_r.shape[1:]), dtype=ring_r.dtype, device=device)
        start = (q - k) % n
        first = min(k, n - start)
        out[:first].copy_(ring_r[start:start + first], non_blocking=True)
        if first < k:
            out[first:].copy_(ring_r[:k - first], non_blocking=True)
        return out.index_select(0, self._reverse(device)[n - k:])

    def _gather_batch(self, k: int, device: torch.device,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Virtual embeddings (rows, d) and labels (rows,), newest step first; labels offset
        by j*C for the j-th step when virtual weights are on."""
        gap1, n = self.step_gap + 1, self.num_steps
        r, q = self._num_pushed % gap1, self._num_pushed // gap1
        rows = [(q - j) % n for j in range(1, k + 1)]
        lens = [self._lens[r * n + row] for row in rows]
        cap = self._batch_capacity()
        if all(length == cap for length in lens):
            emb = self._take(self._q_emb[r], k, q, device).reshape(k * cap, -1)
            lab = self._take(self._q_lab[r], k, q, device)
            if self.virtual_weights:
                lab = lab + self._offsets(device)[:k].unsqueeze(1).to(lab.dtype)
            return emb.to(dtype), lab.reshape(-1)
        # some selected step had a smaller batch: one view per step (a loop over steps, not samples)
        embs, labs = [], []
        for j, (row, length) in enumerate(zip(rows, lens), start=1):
            embs.append(self._q_emb[r, row, :length].to(device, non_blocking=True))
            lab = self._q_lab[r, row, :length].to(device, non_blocking=True)
            labs.append(lab + j * self.num_classes if self.virtual_weights else lab)
        return torch.cat(embs).to(dtype), torch.cat(labs)

    def _gather_weight(self, name: str, k: int, device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
        gap1 = self.step_gap + 1
        r, q = self._num_pushed % gap1, self._num_pushed // gap1
        return self._take(self._q_w[name][r], k, q, device).to(dtype)

    def _storage_device(self, device: torch.device) -> torch.device:
        return self.storage_device if self.storage_device is not None else device

    def _pin(self) -> bool:
        return torch.cuda.is_available()

    def _alloc(self, shape: tuple[int, ...], dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        pin = device.type == "cpu" and self.storage_device is not None and self._pin()
        return torch.zeros(shape, dtype=dtype, device=device, pin_memory=pin)

    def _to_compute_device(self, device: torch.device) -> None:
        """Move a ring without a fixed storage device to the compute device (after a load or
        a .to() of the parent)."""
        if self.storage_device is not None:
            return
        for t in (self._q_emb, self._q_lab, *self._q_w.values()):
            if t is not None and t.device != device:
                self._q_emb = None if self._q_emb is None else self._q_emb.to(device)
                self._q_lab = None if self._q_lab is None else self._q_lab.to(device)
                self._q_w = {n: w.to(device) for n, w in self._q_w.items()}
                return

    def _host_ring_with_cuda(self) -> bool:
        return self._pin() and any(t is not None and t.device.type == "cpu"
                                   for t in (self._q_emb, self._q_lab, *self._q_w.values()))

    def _ensure_batch_capacity(self, batch: int, d: int, emb_dtype: torch.dtype,
                               lab_dtype: torch.dtype, device: torch.device) -> None:
        cap = self._batch_capacity()
        if cap >= batch:
            return
        m1, n = self.step_gap + 1, self.num_steps
        new_emb = self._alloc((m1, n, batch, d), self.storage_dtype or emb_dtype, device)
        new_lab = self._alloc((m1, n, batch), lab_dtype, device)
        if self._q_emb is not None:
            if self._host_ring_with_cuda():
                torch.cuda.synchronize()  # async device->host pushes must have landed
            new_emb[:, :, :cap].copy_(self._q_emb)
            new_lab[:, :, :cap].copy_(self._q_lab)
        self._q_emb, self._q_lab = new_emb, new_lab

    @torch.no_grad()
    def _push(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Record this step (detached copies) in the slot of the oldest one."""
        device = self._storage_device(embeddings.device)
        gap1 = self.step_gap + 1
        r, q = self._num_pushed % gap1, (self._num_pushed // gap1) % self.num_steps
        batch = embeddings.shape[0]
        if self.virtual_embeddings:
            self._ensure_batch_capacity(batch, embeddings.shape[1], embeddings.dtype,
                                        labels.dtype, device)
            self._q_emb[r, q, :batch].copy_(embeddings.detach(), non_blocking=True)
            self._q_lab[r, q, :batch].copy_(labels, non_blocking=True)
        self._lens[r * self.num_steps + q] = batch
        if self.virtual_weights:
            for name, _ in self._params:
                p = self.loss._parameters[name].detach()
                if name not in self._q_w:
                    store = self.storage_dtype if (p.is_floating_point() and self.storage_dtype) \
                        else p.dtype
                    self._q_w[name] = self._alloc((gap1, self.num_steps, *p.shape), store, device)
                self._q_w[name][r, q].copy_(p, non_blocking=True)
        self._num_pushed += 1

    # ---- state -----------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        """The ring (by reference, like parameters in a state_dict), its bookkeeping and the
        epoch."""
        if self._host_ring_with_cuda():
            torch.cuda.synchronize()  # async device->host pushes must have landed
        return {
            "version": 1,
            "num_steps": self.num_steps,
            "step_gap": self.step_gap,
            "num_pushed": self._num_pushed,
            "epoch": self._epoch,
            "num_virtual_steps": self._k,
            "slot_lengths": torch.tensor(self._lens, dtype=torch.long),
            "embeddings": self._q_emb,
            "labels": self._q_lab,
            "weights": dict(self._q_w),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("num_steps") != self.num_steps or state.get("step_gap") != self.step_gap:
            raise ValueError(
                f"MemVir state has num_steps={state.get('num_steps')}, "
                f"step_gap={state.get('step_gap')}; this wrapper has "
                f"num_steps={self.num_steps}, step_gap={self.step_gap}")

        def place(t: torch.Tensor | None, floating: bool) -> torch.Tensor | None:
            if t is None:
                return None
            t = t.detach().clone()
            if floating and self.storage_dtype is not None:
                t = t.to(self.storage_dtype)
            if self.storage_device is not None:
                t = t.to(self.storage_device)
                if self.storage_device.type == "cpu" and self._pin():
                    t = t.pin_memory()
            return t

        self.reset()
        self._num_pushed = int(state["num_pushed"])
        self._epoch = int(state["epoch"])
        self._k = int(state["num_virtual_steps"])
        self._lens = [int(x) for x in state["slot_lengths"].tolist()]
        self._q_emb = place(state["embeddings"], True)
        self._q_lab = place(state["labels"], False)
        self._q_w = {n: place(w, True) for n, w in state["weights"].items()}

    def extra_repr(self) -> str:
        return (f"num_steps={self.num_steps}, step_gap={self.step_gap}, "
                f"warmup_epochs={self.warmup_epochs}, step_pacing={self.step_pacing}, "
                f"virtual_embeddings={self.virtual_embeddings}, "
                f"virtual_weights={self.virtual_weights}, storage_dtype={self.storage_dtype}, "
                f"storage_device={self.storage_device}")


# ---- registry ------------------------------------------------------------------------------

MEMVIR_DEFAULTS: dict[str, Any] = {"num_steps": 45, "step_gap": 10, "warmup_epochs": 40,
                                   "step_pacing": True, "virtual_embeddings": True,
                                   "virtual_weights": True, "storage_dtype": None,
                                   "storage_device": None}
MEMVIR_SEARCH_SPACE = {"num_steps": ("int", 1, 100), "step_gap": ("int", 0, 30),
                       "warmup_epochs": ("int", 0, 100)}
# Per-base overrides of the CARS196 reference runs (specs/memvir.md).
_BASE_OVERRIDES = {"proxynca": {"num_steps": 20, "step_gap": 25}}
BASES = ("softmax", "normsoftmax", "cosface", "arcface", "proxynca", "proxyanchor",
         "curricularface", "softtriple")


def _components_for(base_name: str):
    def components(num_classes: int, embedding_size: int, *, num_steps: int, step_gap: int,
                   warmup_epochs: int, step_pacing: bool, virtual_embeddings: bool,
                   virtual_weights: bool, storage_dtype: Any = None,
                   storage_device: Any = None, **base_params: Any):
        loss, miner = get_method(base_name).components(num_classes, embedding_size,
                                                       **base_params)
        if miner is not None:
            raise ValueError(f"MemVir wraps a loss without a miner; {base_name!r} has "
                             f"{type(miner).__name__}")
        return MemVir(loss, num_steps=num_steps, step_gap=step_gap, warmup_epochs=warmup_epochs,
                      step_pacing=step_pacing, virtual_embeddings=virtual_embeddings,
                      virtual_weights=virtual_weights, storage_dtype=storage_dtype,
                      storage_device=storage_device), None

    return components


def register_memvir(base_name: str) -> None:
    """Register `memvir+BASE` over a registered classification / proxy loss whose class
    weights are its `W` (a third-party package calls this for its own loss)."""
    base = get_method(base_name)
    register(MethodSpec(
        name=f"memvir+{base_name}",
        components=_components_for(base_name),
        defaults={**base.defaults, **MEMVIR_DEFAULTS, **_BASE_OVERRIDES.get(base_name, {})},
        search_space={**base.search_space, **MEMVIR_SEARCH_SPACE},
        family=base.family,
        m_per_class=base.m_per_class,
        base=base_name,
        description=f"MemVir (Ko et al. 2021) virtual classes over {base_name}",
    ))


for _base in BASES:
    register_memvir(_base)
