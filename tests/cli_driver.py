"""Several ``python -m MODULE ARGS`` command lines in one fresh Python process, each run as ``python -m`` runs it.

``runpy.run_module(..., run_name="__main__")`` is what ``python -m`` does; a script path runs as ``python PATH``.
Each command gets its own stdout, stderr (captured at the file-descriptor level, so logging handlers and C code are
caught too) and stdin, and reports its exit code, its wall time and the process's peak memory so far. One process
pays the imports (torch, transformers) once instead of once per command, which keeps the entry-point tests fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from train_fixtures import REPO

_DRIVER = r"""
import io, json, os, resource, runpy, sys, tempfile, time, traceback

calls_file, results_file, limit_gb = sys.argv[1], sys.argv[2], float(sys.argv[3])
if limit_gb > 0:  # a command that would build a huge model fails here instead of taking the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30), int(limit_gb * 2**30)))
results = []
for call in json.load(open(calls_file)):
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
    sys.argv = [call["target"], *call["args"]]
    sys.stdin = io.StringIO(call.get("stdin") or "")
    rc, start = 0, time.monotonic()
    try:
        if call["target"].endswith(".py"):
            runpy.run_path(call["target"], run_name="__main__")
        else:
            runpy.run_module(call["target"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    sys.stdout.flush(); sys.stderr.flush()
    os.dup2(saved[0], 1); os.dup2(saved[1], 2)
    os.close(saved[0]); os.close(saved[1])
    out.seek(0); err.seek(0)
    results.append({"rc": rc, "out": out.read().decode("utf-8", "replace"), "err": err.read().decode("utf-8", "replace"),
                    "seconds": time.monotonic() - start,
                    "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
json.dump(results, open(results_file, "w"))
"""


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float
    peak_mb: float  # the driver process's peak resident memory after this command

    @property
    def text(self) -> str:
        return self.out + self.err


def cmd(target: str, *args: str, stdin: str | None = None) -> dict:
    """One command line: a module (``llava.serve.cli``) or a script path (``benchmarks/x.py``)."""
    return {"target": target, "args": [str(a) for a in args], "stdin": stdin}


def run_commands(calls: list[dict], tmp: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                 memory_limit_gb: float = 0, timeout: float = 600) -> list[Result]:
    """Runs ``calls`` in order in one fresh process; returns their results."""
    tmp.mkdir(parents=True, exist_ok=True)
    calls_file, results_file = tmp / "calls.json", tmp / "results.json"
    calls_file.write_text(json.dumps(calls))
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                    OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **(env or {}))
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(calls_file), str(results_file), str(memory_limit_gb)],
                          cwd=cwd or tmp, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and results_file.is_file(), proc.stdout[-2000:] + proc.stderr[-4000:]
    return [Result(**r) for r in json.loads(results_file.read_text())]
