"""BN-Inception training throughput: a conventional CARS-like step loop on synthetic images.

The loop is MemVir's conventional setting on CARS196 (Table 4): BN-Inception with frozen
BatchNorm -> Linear(1024, 512), Norm-softmax over 98 classes, Adam (eps 0.01, wd 1e-4; lr 1e-4
trunk and head, 1e-2 class weights), 224x224 images, batch 128, AMP (float16 autocast +
GradScaler) on CUDA. Images are synthetic BGR mean-subtracted tensors already on the device,
so the figure is the model's step rate (forward, loss, backward, optimizer step), not the
data pipeline's; `transform_images_per_s` gives the other side: JPEG decode + the
conventional train transform per CPU process, to size `train.num_workers`.

Without CUDA the GPU check is skipped (said so, and {} returned); a CPU step rate at a small
batch is printed for reference either way.
"""
from __future__ import annotations

import io
import time

import numpy as np
import torch

CLASSES = 98            # CARS196 conventional training classes
EMBEDDING = 512
IMAGE = 224


def _model_and_step(device: torch.device, batch: int, amp: bool, channels_last: bool):
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    from dmlbench.bench.models import EmbeddingModel
    from dmlbench.bench.models.bninception import BNInception, MEAN_BGR

    torch.manual_seed(0)
    model = EmbeddingModel(BNInception(), EMBEDDING, freeze_bn=True).to(device)
    loss_fn = NormalizedSoftmaxLoss(CLASSES, EMBEDDING).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-4},
                            {"params": loss_fn.parameters(), "lr": 1e-2}],
                           eps=0.01, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    model.train()
    g = torch.Generator(device="cpu").manual_seed(1)
    pool = torch.randint(0, 256, (2 * batch, 3, IMAGE, IMAGE), dtype=torch.uint8, generator=g)
    pool = pool.to(device)
    mean = torch.tensor(MEAN_BGR, device=device).view(1, 3, 1, 1)

    def step() -> None:
        idx = torch.randint(0, len(pool), (batch,), generator=g).to(device)
        x = pool.index_select(0, idx).float() - mean
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, CLASSES, (batch,), generator=g).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            emb = model(x)
        loss = loss_fn(emb.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _time_steps(device: torch.device, batch: int, steps: int, warmup: int, *, amp: bool,
                channels_last: bool = False) -> dict:
    step = _model_and_step(device, batch, amp, channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    out = {"batch": batch, "image_size": IMAGE, "amp": amp, "channels_last": channels_last,
           "steps": steps, "step_ms_median": 1000 * med, "images_per_s": batch / med,
           "images_per_s_mean": batch * steps / sum(times)}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


def _transform_rate(n: int) -> float:
    """Images/s of JPEG decode + conventional BN-Inception train transform, one process."""
    from PIL import Image

    from dmlbench.bench.models.transforms import make_transforms

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(8):                                   # CARS196 images are ~700x480 JPEGs
        arr = rng.integers(0, 256, (480, 700, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    tr = make_transforms("conventional", "bninception")(IMAGE, True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            with Image.open(io.BytesIO(blobs[i % len(blobs)])) as im:
                tr(im.convert("RGB"))
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def main(quick: bool = False) -> dict:
    cpu_batch = 2 if quick else 4
    cpu = _time_steps(torch.device("cpu"), cpu_batch, steps=2 if quick else 3, warmup=1,
                      amp=False)
    print(f"   CPU reference: {cpu['images_per_s']:.1f} img/s (batch {cpu_batch}, {IMAGE}px, "
          f"fp32, {torch.get_num_threads()} threads, step {cpu['step_ms_median']:.0f} ms)")
    tr_rate = _transform_rate(50 if quick else 200)
    print(f"   decode + conventional train transform: {tr_rate:.0f} img/s per CPU process")
    if not torch.cuda.is_available():
        print("   GPU check skipped: no CUDA GPU on this machine")
        return {}
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    steps, warmup = (10, 5) if quick else (30, 10)
    rows = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cpu_reference": cpu, "transform_images_per_s_per_process": tr_rate}
    for name, cl in (("amp", False), ("amp_channels_last", True)):
        r = _time_steps(dev, 128, steps, warmup, amp=True, channels_last=cl)
        rows[name] = r
        print(f"   {rows['device']}: {r['images_per_s']:.0f} img/s (batch 128, {IMAGE}px, AMP"
              f"{', channels_last' if cl else ''}; step {r['step_ms_median']:.1f} ms, "
              f"peak {r['peak_memory_gib']:.1f} GiB)")
    fp32 = _time_steps(dev, 128, max(5, steps // 3), 3, amp=False)
    rows["fp32"] = fp32
    print(f"   {rows['device']}: {fp32['images_per_s']:.0f} img/s without AMP "
          "(fp32; cuDNN convolutions may use TF32, PyTorch's default)")
    rows["images_per_s"] = rows["amp"]["images_per_s"]
    return rows


if __name__ == "__main__":
    main()
