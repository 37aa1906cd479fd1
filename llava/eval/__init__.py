"""Benchmark evaluation: one inference runner, small per-benchmark adapters, exact scorers and the paper report.

Layout:
- ``run_benchmark``: the single inference runner (chunked, resumable, batched).
- ``fingerprint``: cached sha256 fingerprints of checkpoints and question files, the runner's resume identity.
- ``merge``: joins chunk files and fails loudly on a missing or duplicate question id.
- ``convert``: writes upstream/server file formats (GQA predictions, VQAv2/VizWiz submissions, SEED upload).
- ``score``: scores one benchmark and writes a JSON result that ``report`` reads.
- ``report``: the paper's Table 1 / Table 2 layout from a folder of results (``paper_tables`` holds the
  paper's own cells, used as the report's regression test).
- ``efficiency``: average vision tokens and vision TFLOPs of a schedule (Table 2's accounting).
- ``demo_data``: demo-scale benchmark files in the real formats, for the CPU demo checkpoint.
- ``benchmarks``: the adapter registry (question loading, prompt suffix, answer joining).
- ``scorers``: the official scoring algorithms, free of file formats so they can be tested on hand-made data.
"""
