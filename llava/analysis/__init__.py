"""Diagnostics behind HiDrop's layer choices (paper, section 2 and 3.2; docs/Analysis.md).

Each tool is a module runnable with ``python -m llava.analysis.<tool>`` and writes ``<tool>.json`` and
``<tool>.png`` into ``--output-dir``:

- ``layer_dynamics``: S_intra (vision / text) and S_cross per layer (Fig. 2): where to inject vision.
- ``early_exit``: benchmark accuracy when vision is removed from layer l on, per masking ratio (Fig. 4): where to exit.
- ``ilvas``: inter-layer visual attention similarity (Fig. 6 / 9): where to prune.
- ``kept_tokens``: which patches survive each prune stage, drawn over the image (reusable by a web demo).

Nothing is imported here so that ``python -m llava.analysis.<tool>`` loads only what that tool needs.
"""
