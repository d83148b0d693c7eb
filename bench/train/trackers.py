"""Experiment trackers as training callbacks: TensorBoard, MLflow and Weights & Biases.

`train.trackers: [tensorboard, mlflow, wandb]` adds one callback per name to a fit that has a
run folder (`make_trackers`; `fit` does this). Every tracker receives the same things:

- at the start, the config as hyperparameters (dotted keys such as `train.lr`,
  `method.params.alpha`; lists as JSON text);
- every train.log_every iterations, the training log's scalars at step = iteration:
  `train/loss`, `train/lr/GROUP`, `train/images_per_s`, `train/epoch` and the method's own
  signals (`Objective.stats()`) as `train/NAME` (e.g. `train/memvir_k`);
- after each evaluation, `eval/METRIC` at step = the evaluation's iteration;
- at the end, the best evaluation's metrics (by train.select_by) as `best/METRIC` and the last
  one's as `final/METRIC`, plus `best/epoch`.

Where they write, inside the run folder RUN_DIR:
- tensorboard: event files in RUN_DIR/tb (`tensorboard --logdir RUN_DIR/tb`); hyperparameters
  in the HParams tab and as the text `config`. A resumed fit writes a purge step, so TensorBoard
  hides what a killed attempt logged past the checkpoint.
- mlflow: MLflow's local file store RUN_DIR/mlruns, experiment "dmlbench", one MLflow run per
  run folder (a resumed fit continues it; its id is kept in RUN_DIR/mlflow_run_id), or the
  server / database of MLFLOW_TRACKING_URI when that is set. MLflow 3 serves a file store only
  with MLFLOW_ALLOW_FILE_STORE=true (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui
  --backend-store-uri RUN_DIR/mlruns`); the tracker opts in for its own store while opening it
  and leaves the environment as it was.
- wandb: W&B's run files under RUN_DIR/wandb, in the mode W&B is configured for (WANDB_MODE=
  offline keeps everything local; sync later with `wandb sync`); the run id is kept in
  RUN_DIR/wandb_run_id so a resumed fit continues the same W&B run.

Each needs an optional extra (`pip install 'dmlbench[tensorboard]'`, `[mlflow]`, `[wandb]`); a
missing package is a UserError naming the extra, raised when the callbacks are made, before
training. Only the main process of a data-parallel fit writes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from dmlbench.bench import distributed
from dmlbench.bench.errors import UserError
from dmlbench.bench.train.callbacks import Callback

log = logging.getLogger("dmlbench.train")

TRACKERS = ("tensorboard", "mlflow", "wandb")
TB_DIR = "tb"
MLFLOW_DIR = "mlruns"
MLFLOW_RUN_ID = "mlflow_run_id"
WANDB_RUN_ID = "wandb_run_id"
EXPERIMENT = "dmlbench"


def _require(name: str, module: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"train.trackers includes {name}, but {module!r} cannot be imported "
                        f"({e}); install it with: pip install 'dmlbench[{name}]'") from None


def flat_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as {dotted key: scalar}: numbers, strings and booleans as they are, None as
    "null", lists and empty mappings as JSON text."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif node is None:
            out[prefix] = "null"
        elif isinstance(node, (bool, int, float, str)):
            out[prefix] = node
        else:
            out[prefix] = json.dumps(node, default=str)

    walk(cfg, "")
    return out


def log_scalars(info: dict[str, Any]) -> dict[str, float]:
    """The scalars of one `on_log` record, as trackers receive them."""
    out = {"train/loss": float(info["loss"]), "train/images_per_s": float(info["images_per_s"]),
           "train/epoch": float(info["epoch"])}
    out.update({f"train/lr/{g}": float(v) for g, v in info["lr"].items()})
    out.update({f"train/{k}": float(v) for k, v in (info.get("stats") or {}).items()})
    return out


def end_scalars(trainer) -> dict[str, float]:
    """`best/METRIC`, `best/epoch` and `final/METRIC` of a fit's evaluations so far."""
    st = trainer.state
    out: dict[str, float] = {}
    if st.best is not None:
        out.update({f"best/{k}": float(v) for k, v in st.best["metrics"].items()})
        out["best/epoch"] = float(st.best["epoch"])
    if st.evaluations:
        out.update({f"final/{k}": float(v) for k, v in st.evaluations[-1]["metrics"].items()})
    return out


def _completed(trainer) -> bool:
    st = trainer.state
    return st.stopped_early or trainer.should_stop or st.epoch >= trainer.cfg["train"]["epochs"]


def _run_name(cfg: dict[str, Any]) -> str:
    return f"{cfg['run']['name'] or cfg['method']['name']} s{cfg['run']['seed']}"


class _Tracker(Callback):
    """Common part: the run folder, the main-process check and where a fit resumes."""

    def __init__(self, run_dir: "str | Path", cfg: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.active = False

    def on_fit_start(self, trainer) -> None:
        if not distributed.is_main():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start(trainer, trainer.state.epoch * trainer.parts.iterations)
        self.active = True

    def on_log(self, trainer, info: dict[str, Any]) -> None:
        if self.active:
            self.scalars(log_scalars(info), info["iteration"])

    def on_evaluation(self, trainer, entry: dict[str, Any]) -> None:
        if self.active:
            self.scalars({f"eval/{k}": float(v) for k, v in entry["metrics"].items()},
                         entry["iteration"])
            self.flush()

    def on_fit_end(self, trainer) -> None:
        if not self.active:
            return
        self.active = False
        self.finish(end_scalars(trainer), trainer.state.epoch * trainer.parts.iterations,
                    _completed(trainer))

    # what a tracker implements
    def start(self, trainer, done: int) -> None: ...
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def finish(self, values: dict[str, float], step: int, completed: bool) -> None: ...


class TensorBoardTracker(_Tracker):
    """Scalars, hyperparameters (HParams tab) and the config text in RUN_DIR/tb."""

    def __init__(self, run_dir: "str | Path", cfg: dict[str, Any]) -> None:
        _require("tensorboard", "tensorboard")
        super().__init__(run_dir, cfg)
        self.writer = None

    def start(self, trainer, done: int) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # a resumed fit: hide whatever a killed attempt wrote past the checkpoint
        self.writer = SummaryWriter(str(self.run_dir / TB_DIR),
                                    purge_step=done + 1 if done > 0 else None)
        if done == 0:
            flat = flat_config(self.cfg)
            metric = f"best/{self.cfg['train']['select_by']}"
            file_writer = self.writer._get_file_writer()
            for summary in hparams(flat, {metric: math.nan}):
                file_writer.add_summary(summary)
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat.items()))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, values: dict[str, float], step: int, completed: bool) -> None:
        self.scalars(values, step)
        self.writer.close()
        self.writer = None


@contextlib.contextmanager
def _allow_file_store(uri: str) -> Iterator[None]:
    """MLflow 3 opens a file store only with MLFLOW_ALLOW_FILE_STORE=true: set it while our
    own file store is opened (MLflow caches the store per URI), then restore it."""
    key = "MLFLOW_ALLOW_FILE_STORE"
    old = os.environ.get(key)
    if uri.startswith("file:") and old is None:
        os.environ[key] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)


class MLflowTracker(_Tracker):
    """One MLflow run per run folder in the file store RUN_DIR/mlruns (or MLFLOW_TRACKING_URI):
    params = the flat config, metrics = the scalars, status FINISHED or FAILED."""

    PARAMS_PER_BATCH = 100   # MLflow's limits of one log_batch call
    METRICS_PER_BATCH = 1000

    def __init__(self, run_dir: "str | Path", cfg: dict[str, Any]) -> None:
        _require("mlflow", "mlflow")
        super().__init__(run_dir, cfg)
        self.client = None
        self.run_id: str | None = None

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or \
            (self.run_dir / MLFLOW_DIR).resolve().as_uri()

    def start(self, trainer, done: int) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri
        with _allow_file_store(uri):
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
        exp_id = experiment.experiment_id if experiment is not None else \
            self.client.create_experiment(EXPERIMENT)
        id_file = self.run_dir / MLFLOW_RUN_ID
        logged: dict[str, str] = {}
        if id_file.exists():
            try:
                run = self.client.get_run(id_file.read_text(encoding="utf-8").strip())
                self.run_id = run.info.run_id
                logged = dict(run.data.params)
                self.client.update_run(self.run_id, status="RUNNING")
            except MlflowException:
                self.run_id = None       # a store emptied since: start a new MLflow run
        if self.run_id is None:
            run = self.client.create_run(exp_id, run_name=_run_name(self.cfg),
                                         tags={"dmlbench.run_dir": str(self.run_dir.resolve())})
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id + "\n", encoding="utf-8")
        # params are immutable in MLflow: a resumed fit adds only the new ones (a changed
        # execution setting such as train.epochs keeps its first value)
        params = [Param(k, str(v)) for k, v in flat_config(self.cfg).items() if k not in logged]
        for i in range(0, len(params), self.PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + self.PARAMS_PER_BATCH])

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = [Metric(k, v, ts, int(step)) for k, v in values.items()]
        for i in range(0, len(metrics), self.METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + self.METRICS_PER_BATCH])

    def finish(self, values: dict[str, float], step: int, completed: bool) -> None:
        if values:
            self.scalars(values, step)
        self.client.set_terminated(self.run_id, "FINISHED" if completed else "FAILED")


class WandbTracker(_Tracker):
    """One W&B run per run folder under RUN_DIR/wandb (W&B's configured mode; WANDB_MODE=
    offline stays local): config = the nested config, history = the scalars, summary = the
    end metrics."""

    def __init__(self, run_dir: "str | Path", cfg: dict[str, Any]) -> None:
        _require("wandb", "wandb")
        super().__init__(run_dir, cfg)
        self.run = None

    def start(self, trainer, done: int) -> None:
        import wandb

        id_file = self.run_dir / WANDB_RUN_ID
        if id_file.exists():
            run_id = id_file.read_text(encoding="utf-8").strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n", encoding="utf-8")
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                  save_code=False)
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or EXPERIMENT,
                                  dir=str(self.run_dir), id=run_id, resume="allow",
                                  name=_run_name(self.cfg), config=self.cfg,
                                  reinit="create_new", settings=settings)
        except Exception as e:   # no login, no network: the user's to fix, before training
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"train.trackers: W&B could not start a run ({first}); run "
                            "`wandb login`, or set WANDB_MODE=offline to keep the run "
                            "local") from None

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=int(step))

    def finish(self, values: dict[str, float], step: int, completed: bool) -> None:
        self.run.summary.update(values)
        self.run.finish(exit_code=0 if completed else 1)
        self.run = None


_CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


def make_trackers(names: "list[str] | tuple[str, ...]", run_dir: "str | Path",
                  cfg: dict[str, Any]) -> list[Callback]:
    """One callback per name of `train.trackers` (see the module docstring); a missing package
    raises UserError naming its extra."""
    out: list[Callback] = []
    for name in dict.fromkeys(names):
        if name not in _CLASSES:
            raise UserError(f"invalid config value train.trackers: unknown tracker {name!r}; "
                            f"allowed: {', '.join(TRACKERS)}")
        out.append(_CLASSES[name](run_dir, cfg))
    return out


__all__ = ["TRACKERS", "MLflowTracker", "TensorBoardTracker", "WandbTracker", "end_scalars",
           "flat_config", "log_scalars", "make_trackers"]
