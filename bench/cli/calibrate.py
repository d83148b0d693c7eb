"""`dmlbench calibrate`: measure the training and embedding throughput of a suite's trunks on
this machine, for `dmlbench suite NAME --plan`."""
from __future__ import annotations

import argparse

from dmlbench.bench.cli.common import EPILOG, positive


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="measure a suite's trunks' images/s here, for --plan",
                       description="Measure, on synthetic images and with random trunk weights, "
                       "the training step (forward, the method's loss, backward, optimizer) and "
                       "embedding images/s of each distinct (trunk, batch size, image size, AMP) "
                       "of a suite on this device, and the per-image cost of its data paths "
                       "(PIL loader, decoded-image cache); store them in the calibration file "
                       "($DMLBENCH_CALIBRATION, else $DMLBENCH_CACHE/calibration.json, else "
                       "~/.cache/dmlbench/calibration.json) that "
                       "`dmlbench suite NAME --plan` uses.", epilog=EPILOG)
    c.add_argument("suite", metavar="FILE|NAME")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    c.add_argument("--iterations", type=positive, metavar="N", help="timed training steps "
                   "(default 300 on a GPU, 5 on a CPU)")
    c.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: the GPU if "
                   "there is one, else the CPU)")
    c.set_defaults(handler=lambda ns: cmd_calibrate(ns.suite, ns.overrides, ns.iterations,
                                                    ns.device))


def _settings(cfg: dict) -> tuple:
    return (cfg["model"]["trunk"], cfg["train"]["batch_size"], cfg["dataset"]["image_size"],
            bool(cfg["train"]["amp"]))


def cmd_calibrate(name: str, overrides: list[str], iterations: int | None,
                  device: str | None) -> int:
    from dmlbench.bench import suite as S
    from dmlbench.bench.calibrate import calibrate
    from dmlbench.bench.data.real import DATASET_INFO
    from dmlbench.bench.errors import UserError

    if device is not None and not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise UserError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N")
    suite, _, runs, studies, _ = S.prepare(name, overrides, None)
    cfgs = [r.cfg for r in runs] + [s.cfg for s in studies]
    seen: dict[tuple, dict] = {}
    for cfg in cfgs:
        seen.setdefault(_settings(cfg), cfg)
    print(f"suite {suite['name']}: {len(seen)} distinct (trunk, batch, image size, AMP)")
    data_done: set = set()
    for (trunk, batch, size, amp), cfg in seen.items():
        info = DATASET_INFO.get(cfg["dataset"]["name"])
        data_key = (cfg["dataset"]["transforms"], size)
        res = calibrate(cfg, device=device, iterations=iterations,
                        num_classes=info.train_classes if info else 100,
                        in_channels=1 if cfg["dataset"]["name"] == "glyphs" else 3,
                        data=data_key not in data_done)
        data_done.add(data_key)
        m = res["model"]
        print(f"{trunk:14s} batch {batch:4d} {size:4d}px amp {str(amp):5s} on {res['device']}: "
              f"train {m['train_images_per_s']:,.1f} img/s (step {1e3 * m['step_s']:.1f} ms, "
              f"{m['iterations']} steps, {m['method']}), embed "
              f"{m['embed_images_per_s']:,.1f} img/s (batch {m['eval_batch_size']})")
        if res["data"]:
            d = res["data"]
            print(f"{'':14s} data, {d['transforms']} {size}px: PIL "
                  f"{1 / d['pil_cpu_s']:,.0f} img per CPU-s per loader process; cache crops "
                  f"on the device {1 / d['cache_s']:,.0f} img/s")
    if seen:
        print(f"stored in {res['path']}")
    return 0
