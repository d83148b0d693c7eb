"""One registry type for methods, datasets and trunks; third-party additions through entry
points, tested with a tiny package installed on the path (a dist-info with entry points)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dmlbench.bench.data import DATASETS, register_dataset
from dmlbench.bench.errors import UserError
from dmlbench.bench.models import TRUNKS, register_trunk
from dmlbench.methods.registry import METHODS, register_method
from tests.conftest import ROOT


@pytest.mark.parametrize("registry,register,existing", [
    (METHODS, lambda n: register_method(n, defaults={})(lambda c, d: (None, None)),
     "normsoftmax"),
    (DATASETS, lambda n: register_dataset(n)(lambda root: None), "glyphs"),
    (TRUNKS, lambda n: register_trunk(n)(lambda **kw: None), "smallcnn"),
])
def test_duplicates_refused_unknown_names_listed(registry, register, existing):
    registry.load()
    with pytest.raises(ValueError, match="registered twice"):
        register(existing)
    with pytest.raises(UserError, match=f"unknown {registry.kind} 'nope'; valid") as e:
        registry.get("nope")
    assert existing in str(e.value)


def test_methods_import_neither_bench_nor_protocols():
    code = ("import sys, dmlbench.methods, dmlbench.methods.memvir, dmlbench.methods.das, "
            "dmlbench.methods.losses; bad = sorted(m for m in sys.modules if m.startswith(("
            "'dmlbench.bench', 'dmlbench.protocols', 'dmlbench.results', 'bench', 'protocols', "
            "'results'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


PLUGIN = '''
import torch
from pytorch_metric_learning import losses
from dmlbench.methods import register_method
from dmlbench.methods.memvir import register_memvir


@register_method("plugin-cos", family="classification", m_per_class=1,
                 defaults={"loss_lr": 1e-2, "temperature": 0.1},
                 search_space={"loss_lr": ("log", 1e-4, 1e-1)})
def _plugin(num_classes, embedding_size, temperature):
    """A third-party loss: PML's normalized softmax under another name."""
    return losses.NormalizedSoftmaxLoss(num_classes, embedding_size,
                                        temperature=temperature), None


register_memvir("plugin-cos")
'''


def test_third_party_method_through_an_entry_point(tmp_path):
    """A package declaring `dmlbench.methods` = its module: `dmlbench list` shows its loss and
    the MemVir variant it registered, and a run trains it."""
    site = tmp_path / "site"
    (site / "dmlplugin").mkdir(parents=True)
    (site / "dmlplugin" / "__init__.py").write_text(PLUGIN)
    info = site / "dmlplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dmlplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dmlbench.methods]\ncos = dmlplugin\n")
    code = textwrap.dedent("""
        import sys
        from dmlbench.bench.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin",
           "DMLBENCH_CACHE": str(ROOT / ".cache")}
    out = subprocess.run([sys.executable, "-c", code, "list", "methods"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "plugin-cos " in out.stdout and "memvir+plugin-cos" in out.stdout
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: {name: memvir+plugin-cos, params: {warmup_epochs: 0, num_steps: 2, "
                   "step_gap: 0}}\ndataset: {options: {num_classes: 20, images_per_class: 8}}\n"
                   "model: {width: 4, embedding_size: 16}\n"
                   "train: {batch_size: 16, epochs: 1, progress: false, threads: 1}\n")
    out = subprocess.run([sys.executable, "-c", code, "run", str(cfg), "--out",
                          str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best at epoch 1" in out.stdout
