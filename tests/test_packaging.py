"""The conda environment and the pip project declare the same requirements."""
from __future__ import annotations

import re
import tomllib

import yaml

from .conftest import ROOT

# conda-forge package names of the pip requirements that are named differently there.
CONDA_NAMES = {"torch": "pytorch", "torch-geometric": "pytorch_geometric", "torch-cluster": "pytorch_cluster"}


def _split(req: str):
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req)
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pip_reqs = dict(_split(r) for r in project["dependencies"] + extras["cluster"] + extras["faiss"] + extras["test"]
                    + extras["serve"] + extras["hub"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str) and not dep.startswith("python=") and dep != "pip":
            name, spec = _split(dep)
            conda[name] = spec
    expected = {CONDA_NAMES.get(name, name): spec for name, spec in pip_reqs.items()}
    assert conda == expected
    assert "-e ." in env["dependencies"][-1]["pip"]


def test_console_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["gdf-pyg"] == "gdf_pyg.cli:main"
