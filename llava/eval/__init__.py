"""Benchmark evaluation: one inference runner, small per-benchmark adapters, exact scorers and the paper report.

Layout:
- ``run_benchmark``: the single inference runner (chunked, resumable, batched).
- ``fingerprint``: cached sha256 fingerprints of checkpoints and question files, the runner's resume identity.
- ``merge``: joins chunk files and fails loudly on a missing or duplicate question id.
- ``convert``: writes upstream/server file formats (GQA predictions, VQAv2/VizWiz submissions, SEED upload,
  MMBench xlsx).
- ``upstream_runner`` with ``model_vqa_loader``, ``model_vqa``, ``model_vqa_science``, ``model_vqa_mmbench``,
  ``run_llava`` and ``eval_pope``, ``eval_science_qa``, ``eval_textvqa``: upstream LLaVA's commands as thin front
  ends of the runner and the scorers (docs/Upstream.md).
- ``score``: scores one benchmark and writes a JSON result that ``report`` reads.
- ``report``: the paper's Table 1 / Table 2 layout from a folder of results (``paper_tables`` holds the
  paper's own cells, used as the report's regression test).
- ``efficiency``: average vision tokens and vision TFLOPs of a schedule (Table 2's accounting).
- ``benchmarks``: the adapter registry (question loading, prompt suffix, answer joining).
- ``scorers``: the official scoring algorithms, free of file formats so they can be tested on hand-made data.

Evaluation never imports ``llava.demo``; the demo's benchmark files come from ``llava.demo.benchmark_files``.
"""
