"""Every benchmark script runs in --quick mode and writes its table, data and plot."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

SCRIPTS = ["graph_construction", "retrieval_engine", "training_throughput", "ablation"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode(script, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--results", str(tmp_path)]
    if script == "ablation":
        cmd += ["--cache", str(tmp_path / "cache")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    name = f"{script}_quick"
    md = (tmp_path / f"{name}.md").read_text()
    assert md.startswith("# ") and f"benchmarks/{script}.py --quick" in md and "|---" in md
    assert json.loads((tmp_path / f"{name}.json").read_text())
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
    if script == "graph_construction":
        assert "| NO |" not in md  # the kNN backends agreed
    if script == "retrieval_engine":
        assert "| NO |" not in md
