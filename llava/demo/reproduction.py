"""Writes docs/Reproduction.md from the measurements of ``scripts/reproduce.sh``; it computes, never types in, a number.

    python -m llava.demo.reproduction --checkpoints checkpoints/reproduce/reproduce --results RESULTS \
        --analysis reports/reproduce/analysis --baseline off --seeds "1 2" --figures docs/figures/reproduction \
        --output docs/Reproduction.md

Per setting: the GQA accuracy of each seed, their mean and range (max - min), Avg(%) against the baseline's mean
(the paper's relative average, here over one benchmark), average vision tokens and the vision-FLOPs fraction of
the baseline (Table 2's column, with the demo model's shape), and the stage-2 training time per run (from the
Trainer's ``train_runtime``) with its ratio to the baseline's. The reading compares pairs of settings with paired
statistics (``llava.eval.significance``): every setting answers the same questions with the same seeds, so each
comparison gets a bootstrap confidence interval of the accuracy difference (questions and seeds resampled) and
McNemar's exact test per seed, and its verdict comes from the interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llava.eval.benchmarks import get_benchmark
from llava.eval.files import EvalDataError
from llava.eval.significance import BootstrapInterval, McNemar, mcnemar_exact, paired_bootstrap

logger = logging.getLogger("llava.demo.reproduction")

# Pairs the paper compares (its tables), as (setting, reference, what the comparison shows).
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("hidrop", "off", "HiDrop (40% of the vision tokens) vs plain LLaVA (Table 1)"),
    ("hidrop", "hidrop-hard", "differentiable vs hard top-k (Table 3)"),
    ("hidrop", "fastv-26", "HiDrop vs FastV-shaped at the same average tokens (Table 1)"),
    ("hidrop", "pdrop-26", "HiDrop vs PDrop-shaped at the same average tokens (Table 1)"),
    ("hidrop", "voco-26", "HiDrop vs VoCo-LLaMA with as many VoCo tokens as HiDrop's average (Table 1)"),
    ("hidrop", "twigvlm-26", "HiDrop vs TwigVLM-shaped (twig-guided pruning, a twig trained on off) at the same "
                             "average tokens (Table 1)"),
    ("twigvlm-26", "off", "TwigVLM-shaped (40% of the vision tokens, training-free on off plus a twig) vs plain "
                          "LLaVA"),
    ("hidrop", "hidrop-compacted", "persistent vs compacted positions (Table 5)"),
    ("hidrop", "hidrop-group", "persistent vs group positions (Table 5)"),
    ("hidrop", "hidrop-last1round", "last token, n rounds vs 1 round (Table 4)"),
    ("hidrop", "hidrop-alltext", "last token (n rounds) vs all text tokens (Table 4)"),
    ("hidrop-alltext-l2", "hidrop-alltext", "all text tokens with vs without L2 weighting (Table 4)"),
)


class ReproductionError(ValueError):
    """A measurement the document needs is missing or malformed; the message names the file."""


@dataclass
class Setting:
    name: str
    scores: dict[str, float] = field(default_factory=dict)  # seed -> GQA accuracy
    train_seconds: dict[str, float] = field(default_factory=dict)  # seed -> stage-2 train_runtime
    avg_vision_tokens: float | None = None
    vision_tflops: float | None = None
    schedule: dict[str, Any] | None = None
    visible_tokens: float | None = None  # VoCo: the tokens the text sees (avg_vision_tokens: what the layers process)
    hits: dict[str, dict[str, bool]] = field(default_factory=dict)  # seed -> question id -> answered correctly
    speculative: dict[str, dict[str, Any]] = field(default_factory=dict)  # seed -> a TwigVLM run's speculative_stats

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores.values())

    @property
    def spread(self) -> float:
        return max(self.scores.values()) - min(self.scores.values()) if self.scores else 0.0

    @property
    def mean_train(self) -> float | None:
        return statistics.fmean(self.train_seconds.values()) if self.train_seconds else None


def _read(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ReproductionError(f"cannot read {path}: {e}") from e


def _split_label(label: str) -> tuple[str, str]:
    name, sep, seed = label.rpartition("-s")
    if not sep or not seed:
        raise ReproductionError(f"result label {label!r} is not <setting>-s<seed>")
    return name, seed


def collect(results_dir: str, checkpoints_dir: str, seeds: Sequence[str]) -> dict[str, Setting]:
    """Settings by name from the GQA result files (labels ``<setting>-s<seed>``) and the stage-2 trainer states."""
    settings: dict[str, Setting] = {}
    if not os.path.isdir(results_dir):
        raise ReproductionError(f"results folder not found: {results_dir}")
    for root, _, files in os.walk(results_dir):
        for fname in sorted(files):
            if fname != "gqa.json":
                continue
            rec = _read(os.path.join(root, fname))
            name, seed = _split_label(str(rec.get("label")))
            if seed not in seeds:
                continue
            s = settings.setdefault(name, Setting(name))
            s.scores[seed] = float(rec["score"])
            s.hits[seed] = _hits(rec, os.path.join(root, fname))
            run = rec.get("run") or {}
            s.avg_vision_tokens = run.get("avg_vision_tokens", s.avg_vision_tokens)
            s.visible_tokens = run.get("visible_vision_tokens", s.visible_tokens)
            s.vision_tflops = run.get("vision_tflops", s.vision_tflops)
            s.schedule = run.get("reduction", s.schedule)
            if run.get("speculative_stats"):
                s.speculative[seed] = run["speculative_stats"]
    if not settings:
        raise ReproductionError(f"no gqa.json results under {results_dir}")
    for s in settings.values():
        missing = [seed for seed in seeds if seed not in s.scores]
        if missing:
            raise ReproductionError(f"setting {s.name}: no result for seed(s) {missing}; rerun the reproduction")
        for seed in seeds:
            state = os.path.join(checkpoints_dir, f"{s.name}-s{seed}", "trainer_state.json")
            history = _read(state).get("log_history", [])
            runtimes = [h["train_runtime"] for h in history if "train_runtime" in h]
            if not runtimes:
                raise ReproductionError(f"{state} has no train_runtime (was the run interrupted?)")
            s.train_seconds[seed] = float(runtimes[-1])
    return settings


def _hits(rec: dict[str, Any], path: str) -> dict[str, bool]:
    """Per-question correctness of one result, re-read from the answers and annotation files it was scored from."""
    inputs = rec.get("inputs") or {}
    answers, annotation = inputs.get("answers_file"), inputs.get("annotation_file")
    if not answers or not annotation:
        raise ReproductionError(f"{path} does not name its answers and annotation files (inputs); rescore it with "
                                "`python -m llava.eval.score`")
    try:
        hits = get_benchmark("gqa").hits(answers, annotation)
    except (EvalDataError, OSError) as e:
        raise ReproductionError(f"cannot re-read the answers behind {path}: {e}") from e
    accuracy = 100 * sum(hits.values()) / len(hits) if hits else float("nan")
    if not abs(accuracy - float(rec["score"])) < 0.01:
        raise ReproductionError(f"{path}: its answers score {accuracy:.2f}, not the recorded {rec['score']}; were they "
                                "rewritten after scoring?")
    return hits


def _budget(s: Setting) -> float | None:
    """The tokens a setting is compared at: what the text sees (VoCo's N), else the average present per layer."""
    return s.visible_tokens if s.visible_tokens is not None else s.avg_vision_tokens


def _schedule_text(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "-"
    if schedule.get("compress_tokens"):
        return (f"VoCo-LLaMA: all layers, nothing pruned; {schedule['compress_tokens']} VoCo tokens after the image, "
                f"{schedule.get('compress_visibility', 'code')} visibility")
    if not schedule.get("prune_layers") and schedule.get("inject_layer") == 1 and schedule.get("exit_layer") == -1:
        return "all layers, nothing pruned"
    parts = [f"inject {schedule['inject_layer']}"]
    if schedule.get("prune_layers"):
        parts.append("prune " + ",".join(map(str, schedule["prune_layers"])) + " -> "
                     + ",".join(map(str, schedule["keep_counts"])))
    parts.append("exit " + ("none" if schedule.get("exit_layer") == -1 else str(schedule["exit_layer"])))
    extras = [f"{k}={schedule[k]}" for k, default in (("topk", "diff"), ("score_query", "last_nround"),
                                                      ("score_weight", "none"), ("score_layer", "next"),
                                                      ("position_scheme", "persistent"))
              if schedule.get(k, default) != default]
    return "; ".join(parts + extras)


def _twig_lines(settings: dict[str, Setting], order: Sequence[str]) -> list[str]:
    """TwigVLM settings: the stage-2 column holds the twig's own training (its base is `off`'s checkpoint), and the
    evaluation ran with self-speculative decoding, whose acceptance rate and speed are given here."""
    out = []
    for n in order:
        spec = settings[n].speculative
        if not spec:
            continue
        rates = [v["acceptance_rate"] for v in spec.values() if v.get("acceptance_rate") is not None]
        speeds = [v["tokens_per_second"] for v in spec.values() if v.get("tokens_per_second") is not None]
        out.append(f"{n}: the time column is the twig's own training on `off`'s checkpoint; evaluated with "
                   f"self-speculative decoding, acceptance rate {statistics.fmean(rates):.3f} (mean over seeds) at "
                   f"{statistics.fmean(speeds):.1f} tokens/s." if rates and speeds else
                   f"{n}: evaluated with self-speculative decoding (no acceptance recorded).")
    return ["", *out] if out else []


def render(settings: dict[str, Setting], baseline: str, seeds: Sequence[str], analysis: dict[str, Any],
           figures_rel: dict[str, str], wall_seconds: float | None) -> str:
    if baseline not in settings:
        raise ReproductionError(f"baseline setting {baseline!r} has no results")
    base = settings[baseline]
    order = [baseline] + sorted((n for n in settings if n != baseline), key=lambda n: (-(_budget(settings[n]) or 0), n))
    lines = [
        "# Reproduction at CPU scale",
        "",
        "Written by `python -m llava.demo.reproduction` from the measurements of `make reproduce`"
        " (`scripts/reproduce.sh`); every number below is computed from the run's result files, none is typed in.",
        "",
        "Setup: the demo's tiny LLaVA (8-layer LLaMA, hidden 128; CLIP tower giving 64 vision tokens per image) on the"
        " demo's digit-grid data. Each setting is finetuned (stage 2, 1 epoch, 2 CPU ranks, ZeRO-3) from a projector"
        " pretrained as plain LLaVA with the same seed (the paper's \"FT only\" recipe, so every setting starts from the"
        " same stage 1), then evaluated on the demo's 500 GQA-style questions.",
        f"Seeds: {', '.join(seeds)}." + (f" Wall time of the whole run: {wall_seconds / 60:.1f} min." if wall_seconds else ""),
        *_not_run_line(settings),
        "",
        "## Accuracy (Tables 1, 3, 4 and 5 at demo scale)",
        "",
        "| setting | schedule | avg vision tokens | " + " | ".join(f"GQA seed {s}" for s in seeds)
        + " | mean | range | Avg(%) |",
        "|---|---|---|" + "---|" * len(seeds) + "---|---|---|",
    ]
    for n in order:
        s = settings[n]
        cells = " | ".join(f"{s.scores[seed]:.2f}" for seed in seeds)
        rel = 100 * s.mean / base.mean if base.mean else float("nan")
        tokens = "-" if s.avg_vision_tokens is None else f"{s.avg_vision_tokens:.2f}"
        if s.visible_tokens is not None:
            tokens = f"{s.visible_tokens:.2f} seen ({tokens} processed)"
        lines.append(f"| {n} | {_schedule_text(s.schedule)} | {tokens} | {cells} | {s.mean:.2f} | {s.spread:.2f} | {rel:.1f} |")
    lines += [
        "",
        "Avg(%) is 100 x mean / the baseline's mean (one benchmark here). Range is max - min over the seeds.",
        "",
        "## Training time next to the FLOPs (Table 2 at demo scale)",
        "",
        "| setting | vision FLOPs vs baseline | stage-2 time per run (s) | time vs baseline |",
        "|---|---|---|---|",
    ]
    for n in order:
        s = settings[n]
        flops = "-" if not (s.vision_tflops and base.vision_tflops) else f"{s.vision_tflops / base.vision_tflops:.3f}"
        t, bt = s.mean_train, base.mean_train
        label = f"{n} (the twig's training only)" if (s.schedule or {}).get("score_layer") == "twig" else n
        lines.append(f"| {label} | {flops} | {t:.1f} | {t / bt:.3f} |" if t and bt else f"| {label} | {flops} | - | - |")
    lines += _twig_lines(settings, order)
    lines += [
        "",
        "Vision FLOPs use the paper's per-layer formula (`llava.eval.efficiency`) with the demo model's shape. At this"
        " size the text tokens, the CLIP tower, the optimizer and the two-rank communication cost as much as the"
        " vision tokens, so the measured time ratio stays far above the FLOPs ratio; the 7B picture is in the README's"
        " speed section.",
        "",
        _timing_caveat(settings, order, base),
        "",
        *reading_section(settings, seeds),
    ]
    if analysis:
        lines += ["## Analysis tools on the trained HiDrop checkpoint (seed " + seeds[0] + ")", ""]
        for key, title in (("layer_dynamics", "Layer dynamics (Fig. 2)"), ("early_exit", "Early-exit study (Fig. 4)"),
                           ("ilvas", "ILVAS (Figs. 6 and 9)"), ("kept_tokens", "Kept-token maps")):
            if key not in analysis:
                continue
            lines += [f"### {title}", ""]
            summary = _analysis_summary(key, analysis[key])
            if summary:
                lines += [summary, ""]
            if key in figures_rel:
                lines += [f"![{title}]({figures_rel[key]})", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Comparison:
    first: str
    second: str
    what: str
    interval: BootstrapInterval
    mcnemar: list[McNemar]  # one per seed

    @property
    def verdict(self) -> str:
        if self.interval.low > 0:
            return f"{self.first} better"
        if self.interval.high < 0:
            return f"{self.second} better"
        return "undecided"


def _not_run_line(settings: dict[str, Setting]) -> list[str]:
    """Names the study's settings this run left out (``ONLY``), so that a missing row reads as not run."""
    study = dict.fromkeys(name for a, b, _ in COMPARISONS for name in (a, b))
    missing = [name for name in study if name not in settings]
    if not missing:
        return []
    return [f"Not run this time (`ONLY` left them out; `make reproduce` runs them): {', '.join(missing)}; their rows"
            " and comparisons are absent."]


def compare(settings: dict[str, Setting], seeds: Sequence[str], reps: int = 10_000) -> list[Comparison]:
    """The paired statistics of every comparison in COMPARISONS whose two settings were run."""
    out = []
    for a, b, what in COMPARISONS:
        if a not in settings or b not in settings:
            continue
        qids = sorted(settings[a].hits[seeds[0]])
        for name in (a, b):
            for seed in seeds:
                if sorted(settings[name].hits[seed]) != qids:
                    raise ReproductionError(f"{name} seed {seed} answered other questions than {a} seed {seeds[0]}; "
                                            "paired statistics need the same questions everywhere")
        ha = np.array([[settings[a].hits[s][q] for q in qids] for s in seeds])  # [S, Q]
        hb = np.array([[settings[b].hits[s][q] for q in qids] for s in seeds])
        out.append(Comparison(a, b, what, paired_bootstrap(ha, hb, reps=reps),
                              [mcnemar_exact(ha[i], hb[i]) for i in range(len(seeds))]))
    return out


def reading_section(settings: dict[str, Setting], seeds: Sequence[str]) -> list[str]:
    comparisons = compare(settings, seeds)
    questions = len(next(iter(settings.values())).hits[seeds[0]])
    lines = [
        "## Reading: paired statistics",
        "",
        f"Every setting answered the same {questions} questions with the same {len(seeds)} seeds (seed s of every"
        " setting starts from the same stage-1 projector and sees the same data order), so each comparison is paired."
        " The interval is a 95% bootstrap confidence interval of the accuracy difference (first - second, in points),"
        " resampling both the seeds and the questions (10,000 replicates; `llava.eval.significance`). McNemar's exact"
        " test asks, per seed, whether the questions only one of the two answers correctly split like a fair coin"
        " (A-only / B-only counts, two-sided p). The verdict comes from the interval alone: a setting is better"
        " when the whole interval lies on its side of zero, otherwise the comparison is undecided at this scale.",
        "",
        "| comparison | difference (points) | 95% interval | McNemar per seed: A-only / B-only, p | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in comparisons:
        tests = "; ".join(f"s{seed}: {m.a_only}/{m.b_only}, p={m.p_value:.3g}" for seed, m in zip(seeds, c.mcnemar))
        lines.append(f"| {c.what}: {c.first} - {c.second} | {c.interval.difference:+.2f} | "
                     f"[{c.interval.low:+.2f}, {c.interval.high:+.2f}] | {tests} | {c.verdict} |")
    decided = [c for c in comparisons if c.verdict != "undecided"]
    undecided = [c for c in comparisons if c.verdict == "undecided"]
    words = []
    if decided:
        words.append("Decided at this scale: " + "; ".join(
            f"{c.what} ({c.verdict}, {c.interval.difference:+.2f} points, interval [{c.interval.low:+.2f}, "
            f"{c.interval.high:+.2f}])" for c in decided) + ".")
    if undecided:
        widest = max(c.interval.high - c.interval.low for c in undecided)
        words.append("Undecided (the interval includes zero): " + "; ".join(c.what for c in undecided) + ". These"
                     f" intervals are up to {widest:.1f} points wide, so a true difference smaller than about half of"
                     " that cannot be resolved with this many questions and seeds; the paper's gaps between these"
                     " options (about 1 to 3 points of Avg(%) at 7B) are of that size.")
    if len(seeds) < 3:
        words.append(f"Only {len(seeds)} seed(s) were run; the seed level of the bootstrap needs at least 3 to say"
                     " anything about run-to-run variation.")
    return lines + ["", "In words: " + " ".join(words), ""]


def _analysis_summary(key: str, data: dict[str, Any]) -> str:
    """One sentence from each tool's JSON (the keys each tool documents in docs/Analysis.md)."""
    found = {k: data[k] for k in ("suggested_inject_layer", "suggested_exit_layer", "baseline", "reduction_overrides",
                                  "realised_avg_vision_tokens") if k in data}
    if key == "early_exit":
        found["reaches_baseline_at"] = {c.get("ratio"): c.get("reaches_baseline_at") for c in data.get("curves", [])}
    return "; ".join(f"`{k}`: {json.dumps(v)}" for k, v in found.items())


def load_analysis(analysis_dir: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not analysis_dir:
        return out
    for key in ("layer_dynamics", "early_exit", "ilvas", "kept_tokens"):
        path = os.path.join(analysis_dir, f"{key}.json")
        if os.path.isfile(path):
            out[key] = _read(path)
        else:
            logger.warning("no %s in %s; its section is left out", f"{key}.json", analysis_dir)
    return out


def copy_figures(analysis_dir: str | None, figures_dir: str, doc_path: str) -> dict[str, str]:
    rel: dict[str, str] = {}
    if not analysis_dir:
        return rel
    os.makedirs(figures_dir, exist_ok=True)
    for key in ("layer_dynamics", "early_exit", "ilvas", "kept_tokens"):
        src = os.path.join(analysis_dir, f"{key}.png")
        if os.path.isfile(src):
            dst = os.path.join(figures_dir, f"{key}.png")
            shutil.copyfile(src, dst)
            rel[key] = os.path.relpath(dst, os.path.dirname(os.path.abspath(doc_path)) or ".")
    return rel


def _timing_caveat(settings: dict[str, Setting], order: list[str], base: Setting) -> str:
    """The stage-2 times come from runs made one after another, so a change of machine load between runs moves
    them; settings with the same FLOPs show how much."""
    same: dict[float, list[float]] = {}
    for n in order:
        s = settings[n]
        if s.vision_tflops and s.mean_train and base.mean_train and n != base.name:
            same.setdefault(round(s.vision_tflops, 9), []).append(s.mean_train / base.mean_train)
    widest = max(same.values(), key=lambda r: max(r) - min(r), default=[])
    text = ("These times come from runs made one after another on a shared machine, not interleaved, so a change of"
            " load between runs moves them")
    if len(widest) > 1:
        text += (f": settings with identical FLOPs range from {min(widest):.3f} to {max(widest):.3f} of the baseline's"
                 " time")
    return text + ". The interleaved measurement of a training step is `benchmarks/bench_train_step.py`."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.demo.reproduction", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", required=True, help="folder of <setting>-s<seed> stage-2 checkpoints")
    p.add_argument("--results", required=True, help="folder of the GQA result files (labels <setting>-s<seed>)")
    p.add_argument("--analysis", default=None, help="folder of the analysis tools' JSON and PNG files")
    p.add_argument("--baseline", default="off")
    p.add_argument("--seeds", required=True, help='space-separated seeds, e.g. "1 2"')
    p.add_argument("--wall-seconds", type=float, default=None)
    p.add_argument("--figures", default="docs/figures/reproduction")
    p.add_argument("--output", default="docs/Reproduction.md")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    seeds = args.seeds.split()
    try:
        settings = collect(args.results, args.checkpoints, seeds)
        figures = copy_figures(args.analysis, args.figures, args.output)
        text = render(settings, args.baseline, seeds, load_analysis(args.analysis), figures, args.wall_seconds)
    except ReproductionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
