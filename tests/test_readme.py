"""The README's Python example runs exactly as printed."""
from __future__ import annotations

import re

from .conftest import ROOT


def test_readme_python_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert printed.startswith("torch.Size([2, 784]) torch.Size([2, 256]) torch.Size([4, 32])")
