"""Shared helpers of the benchmark scripts: timing, peak memory, device labels, tables, plots."""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from gdf_pyg.utils.allocator import keep_freed_memory

RESULTS = Path(__file__).resolve().parent / "results"
keep_freed_memory()  # as the command line does: every benchmark runs in the allocator state users get


def device_label(device: torch.device) -> str:
    """The card or processor that produced a result, for file names and headings."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], Any], repeats: int = 1) -> Tuple[float, Any]:
    """The shortest wall time of ``repeats`` calls of ``fn`` in seconds (a busy machine only
    slows a call down), and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1,
              budget_s: float = 20.0) -> float:
    """Median wall time of ``fn`` in milliseconds (fewer repeats when a call is slow)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < repeats:
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def _malloc_in_use() -> int:
    """Bytes currently allocated through glibc's malloc (heap and mmap), where readable."""
    import ctypes

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory growth while ``fn`` runs: the CUDA allocator's peak on GPU; on CPU the bytes
    in use by malloc (torch's CPU tensors come from it), sampled every 0.2 ms by a thread."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = _malloc_in_use()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _malloc_in_use())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    fn()
    done.set()
    thread.join()
    return (peak[0] - base) / 2**20


def markdown_table(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(folder: Path, name: str, title: str, body: str, rows: Sequence[Dict[str, object]],
                  command: str) -> Path:
    """``<folder>/<name>.md`` (heading, command, table) and ``<folder>/<name>.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    md = folder / f"{name}.md"
    md.write_text(f"# {title}\n\nCommand: `{command}`\n\n{body}\n")
    (folder / f"{name}.json").write_text(json.dumps(list(rows), indent=1))
    return md


def append_ledger(path: Path, record: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Appends ``record`` to the ledger at ``path`` (one JSON object per line), numbered as its
    next round, and returns every record, oldest first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    record = {"round": len(records) + 1, **record}
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return [*records, record]


def base_parser(description: str, script: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; its results go to ``benchmarks/results/<script>/``."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{script}", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds (used by the tests)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--results", type=Path, default=RESULTS / script, help="folder for the markdown, JSON and PNG results")
    return p


def pyplot():
    """matplotlib's pyplot on the Agg backend, or ``None`` when matplotlib is not installed
    (then the scripts write their tables without the plot)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot written", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def resolve(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: CUDA is not available here")
    return torch.device(device)


def command_line(argv: Optional[Sequence[str]], script: str) -> str:
    """The command that reproduces a result, as typed in the repository's root."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", f"benchmarks.{script}", *map(shlex.quote, args)])


def barh_plot(labels: Sequence[str], values: Sequence[float], xlabel: str, path: Path, title: str = "",
              log: bool = False) -> None:
    """A horizontal bar chart (skipped without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2), dpi=110)
    ax.barh(list(labels), list(values))
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
