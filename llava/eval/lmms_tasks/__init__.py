"""lmms-eval tasks for this project's benchmarks, read from the same local files as ``scripts/eval/<bench>.sh``.

The lmms-eval wheel (0.6.1) ships no task YAMLs, so ``--tasks mme`` finds nothing on its own. This folder holds one
YAML per benchmark, passed to lmms-eval with ``--include_path``; ``python -m llava.eval.lmms_tasks`` prints the
folder, so the documented command works from any directory::

    python -m lmms_eval --model hidrop_llava --model_args pretrained=CKPT,reduction=tok64 --tasks mme \\
        --batch_size 8 --include_path "$(python -m llava.eval.lmms_tasks)" --output_path lmms_results

Each task (``llava.eval.lmms_tasks.task.LocalBenchmarkTask``) reads its questions with our benchmark adapter from
``$DATA_ROOT`` (default ``./playground/data/eval``, upstream's layout, as the eval scripts), gives lmms-eval our
runner's prompt text and images, and scores the answers with our own scorer (the number the eval script prints).
Nothing is downloaded.
"""

from __future__ import annotations

import os

TASK_DIR = os.path.dirname(os.path.abspath(__file__))

__all__ = ["TASK_DIR"]
