"""The README's "Use it from Python" examples run as written, in a fresh process and folder."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def _examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_python_examples_run(tmp_path):
    blocks = _examples()
    assert len(blocks) == 4
    env = {**os.environ, "DMLBENCH_CACHE": str(ROOT / ".cache")}
    env.pop("PYTHONPATH", None)
    for i, code in enumerate(blocks):
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600, env=env)
        assert out.returncode == 0, f"README example {i + 1}:\n{out.stderr[-3000:]}"
        assert out.stdout.strip(), i
