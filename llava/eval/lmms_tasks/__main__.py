"""Prints the task folder for lmms-eval's ``--include_path`` (see the package docstring)."""

from llava.eval.lmms_tasks import TASK_DIR

print(TASK_DIR)
