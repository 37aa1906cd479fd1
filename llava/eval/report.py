"""The paper's Table 1 layout (plus Table 2's efficiency columns) from a folder of scored results.

    python -m llava.eval.report --results-dir playground/data/eval/results --baseline llava-v1.5-7b \
        --output-dir reports/ [--paper-table table1] [--table extra_rows.csv] [--name table1]

One row per method (the ``--label`` given to ``llava.eval.score``, i.e. checkpoint + schedule), one column per
benchmark, then Avg(%) = mean over the row's benchmarks of 100 * score / baseline score, where MME-P enters as
its raw point total (so 1473.3 against 1506.5 counts as 97.8%). Benchmarks the row or its baseline lacks are
left out of that row's mean, and the number used is shown. Rows may carry a printed Avg(%) (the paper's
tables do); when it differs from the value recomputed from the row's own cells by more than 0.1, the report
flags it instead of silently trusting either number.

Efficiency columns: average vision tokens and vision TFLOPs of the schedule that was run, recorded by the
runner (computed with ``llava.eval.efficiency``), or given in a table's columns. A VoCo-LLaMA row has two token
counts: the N VoCo tokens the text sees (the budget it is compared at: the chart and the row order use it) and the
576 + N image tokens every layer processes while compressing (the TFLOPs column); its cell shows both.

Writes ``<name>.md``, ``<name>.csv`` and ``<name>.png`` (Avg(%) against average vision tokens).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llava.eval.benchmarks import BENCHMARK_NAMES
from llava.eval.files import EvalDataError, read_json
from llava.eval.paper_tables import PAPER_TABLES

logger = logging.getLogger("llava.eval.report")

COLUMN_TITLES = {
    "mme": "MME-P", "mmbench": "MMB", "mmbench_cn": "MMB-CN", "gqa": "GQA", "vqav2": "VQAv2", "sqa": "SQA-I",
    "vizwiz": "VizWiz", "textvqa": "TextVQA", "pope": "POPE", "seed": "SEED-I", "mmstar": "MMStar",
}
PRINTED_AVG_TOLERANCE = 0.1


@dataclass
class Row:
    """One table row: a method (checkpoint + schedule) with its benchmark scores."""

    label: str
    group: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    proxy: set[str] = field(default_factory=set)  # benchmarks scored on a local proxy split (val)
    avg_vision_tokens: float | None = None
    vision_tflops: float | None = None
    visible_tokens: float | None = None  # VoCo: image tokens the text sees (avg_vision_tokens: what layers process)
    twig_note: str | None = None  # TwigVLM: the twig's extra prefill FLOPs and speculative decoding's figures
    printed_avg: float | None = None
    baseline: str | None = None
    avg: float | None = None
    avg_count: int = 0

    @property
    def mismatch(self) -> bool:
        return self.printed_avg is not None and self.avg is not None and abs(self.avg - self.printed_avg) > PRINTED_AVG_TOLERANCE + 1e-9


# --------------------------------------------------------------------------------------------------- inputs
def _float_or_none(value: str | None) -> float | None:
    value = (value or "").strip()
    if value in ("", "-"):
        return None
    try:
        return float(value)
    except ValueError:
        raise EvalDataError(f"table cell {value!r} is not a number") from None


def rows_from_table_csv(text: str, where: str) -> list[Row]:
    """Reads a table in the ``paper_tables`` CSV format (label, group, tokens, TFLOPs, benchmarks, printed Avg)."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "label" not in reader.fieldnames:
        raise EvalDataError(f"table {where} needs a header with at least a 'label' column")
    unknown = [c for c in reader.fieldnames if c not in (*BENCHMARK_NAMES, "label", "group", "avg_vision_tokens", "vision_tflops", "printed_avg", "baseline")]
    if unknown:
        raise EvalDataError(f"table {where}: unknown column(s) {unknown}")
    rows = []
    for rec in reader:
        scores = {b: v for b in BENCHMARK_NAMES if (v := _float_or_none(rec.get(b))) is not None}
        rows.append(
            Row(
                label=rec["label"].strip(),
                group=(rec.get("group") or "").strip(),
                scores=scores,
                avg_vision_tokens=_float_or_none(rec.get("avg_vision_tokens")),
                vision_tflops=_float_or_none(rec.get("vision_tflops")),
                printed_avg=_float_or_none(rec.get("printed_avg")),
                baseline=(rec.get("baseline") or "").strip() or None,
            )
        )
    return rows


def _efficiency_from_run(run: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """Average vision tokens and TFLOPs of a run; recomputed from its schedule when the runner left them out."""
    if not run:
        return None, None
    # Realised figures (averaged over the answers' prefills) win over the schedule's nominal ones.
    tokens = run.get("realised_avg_vision_tokens", run.get("avg_vision_tokens"))
    tflops = run.get("realised_vision_tflops", run.get("vision_tflops"))
    llm = run.get("llm") or {}
    if run.get("data_dependent"):
        return tokens, tflops
    if (tokens is None or tflops is None) and run.get("reduction") and llm.get("num_layers") and run.get("num_vision_tokens"):
        try:
            from llava.model.reduction.config import ReductionConfig

            counts = ReductionConfig.from_dict(run["reduction"]).counts_per_layer(int(llm["num_layers"]), int(run["num_vision_tokens"]))
            tokens = tokens if tokens is not None else sum(counts) / len(counts)
            if tflops is None and llm.get("hidden") and llm.get("ffn"):
                from llava.eval.efficiency import vision_tflops

                tflops = float(vision_tflops(counts, int(llm["hidden"]), int(llm["ffn"])))
        except ImportError:
            pass
    return tokens, tflops


def rows_from_results(results_dir: str) -> list[Row]:
    """Groups the score JSON files under ``results_dir`` (any depth) into rows by label."""
    if not os.path.isdir(results_dir):
        raise EvalDataError(f"results folder not found: {results_dir}")
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for root, _, files in os.walk(results_dir):
        for name in sorted(files):
            if not name.endswith(".json") or name.endswith(".run.json"):
                continue
            path = os.path.join(root, name)
            rec = read_json(path, "result file")
            if not isinstance(rec, dict) or "bench" not in rec or "score" not in rec:
                continue
            if rec["bench"] not in BENCHMARK_NAMES:
                logger.warning("%s: unknown benchmark %r, skipped", path, rec["bench"])
                continue
            label = str(rec.get("label") or "unnamed")
            previous = found.setdefault(label, {}).get(rec["bench"])
            if previous is not None:
                logger.warning("two results for %s / %s; keeping the newer one", label, rec["bench"])
                if str(previous.get("scored_at", "")) > str(rec.get("scored_at", "")):
                    continue
            found[label][rec["bench"]] = rec
    rows = []
    for label, by_bench in found.items():
        row = Row(label=label)
        efficiencies = set()
        for bench, rec in by_bench.items():
            row.scores[bench] = float(rec["score"])
            if rec.get("proxy"):
                row.proxy.add(bench)
            tokens, tflops = _efficiency_from_run(rec.get("run"))
            visible = (rec.get("run") or {}).get("visible_vision_tokens")
            if visible is not None:
                row.visible_tokens = float(visible)
            row.twig_note = twig_note(rec.get("run") or {}) or row.twig_note
            if tokens is not None:
                efficiencies.add((round(tokens, 4), None if tflops is None else float(f"{tflops:.6g}")))
        if len(efficiencies) > 1:
            logger.warning("row %s: benchmarks were run with different schedules: %s", label, sorted(efficiencies, key=str))
        if efficiencies:
            row.avg_vision_tokens, row.vision_tflops = sorted(efficiencies, key=str)[0]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------- averages
def relative_average(
    scores: dict[str, float], baseline: dict[str, float], benches: Sequence[str] = BENCHMARK_NAMES
) -> tuple[float | None, int]:
    """Mean of 100 * score / baseline over ``benches`` both have (MME-P as raw points); None if none."""
    ratios = [100.0 * scores[b] / baseline[b] for b in benches if b in scores and baseline.get(b)]
    return (sum(ratios) / len(ratios), len(ratios)) if ratios else (None, 0)


def compute_averages(rows: Sequence[Row], default_baseline: str | None,
                     benches: Sequence[str] = BENCHMARK_NAMES) -> None:
    """Fills ``avg``/``avg_count`` of each row from its baseline row (its own ``baseline`` or the default), over
    ``benches`` (the table's columns)."""
    by_label: dict[str, Row] = {}
    for r in rows:
        by_label.setdefault(r.label, r)
    for r in rows:
        name = r.baseline or default_baseline
        if not name:
            continue
        base = by_label.get(name)
        if base is None:
            logger.warning("row %s: baseline %r not found; no Avg(%%)", r.label, name)
            continue
        r.avg, r.avg_count = relative_average(r.scores, base.scores, benches)


# --------------------------------------------------------------------------------------------------- output
def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def twig_note(run: dict[str, Any]) -> str | None:
    """What a TwigVLM row's efficiency columns leave out (as TwigVLM's own R-bar does): the twig's layers on every
    token at prefill, and, for a speculative run, its drafting; with the acceptance rate and the speed."""
    twig = run.get("twig")
    spec = run.get("speculative_stats")
    if not twig and not spec:
        return None
    parts = []
    if twig:
        extra = run.get("twig_prefill_vision_tflops")
        n = twig.get("num_layers")
        parts.append(f"the twig ({n} layer{'' if n == 1 else 's'} after layer {twig.get('after_layer')}) adds "
                     + (f"{_fmt_tflops(extra)} vision TFLOPs at prefill" if extra is not None else "its prefill FLOPs")
                     + ", not in the TFLOPs column")
    if spec:
        rate, tps = spec.get("acceptance_rate"), spec.get("tokens_per_second")
        parts.append(f"speculative decoding kept {'n/a' if rate is None else f'{100 * rate:.1f}%'} of the drafted tokens"
                     f" ({'n/a' if tps is None else f'{tps:.1f}'} tokens/s)")
    return "; ".join(parts)


def _fmt_tokens(value: float | None) -> str:
    return "-" if value is None else f"{round(value, 2):g}"


def _tokens_cell(row: Row) -> str:
    if row.visible_tokens is None or row.visible_tokens == row.avg_vision_tokens:
        return _fmt_tokens(row.avg_vision_tokens)
    return f"{_fmt_tokens(row.visible_tokens)} seen ({_fmt_tokens(row.avg_vision_tokens)} processed)"


def _budget(row: Row) -> float | None:
    """The token count a row is compared at: what the text sees."""
    return row.visible_tokens if row.visible_tokens is not None else row.avg_vision_tokens


def _fmt_tflops(value: float | None) -> str:
    """Two decimals as in Table 2; scientific notation for the demo-sized models, whose figures are tiny."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.2e}"


def _score_cell(row: Row, bench: str) -> str:
    if bench not in row.scores:
        return "-"
    cell = _fmt(row.scores[bench], 1)
    return f"{cell} (val)" if bench in row.proxy else cell


def render_markdown(rows: Sequence[Row], benches: Sequence[str]) -> str:
    """Table 1 layout with group separator rows, Table 2's efficiency columns, and notes on flagged rows."""
    has_printed = any(r.printed_avg is not None for r in rows)
    header = ["Method", "Avg. vis. tokens", "Infer TFLOPs", *(COLUMN_TITLES[b] for b in benches), "Avg(%)"]
    if has_printed:
        header.append("Printed Avg(%)")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    group = None
    notes = []
    for r in rows:
        if r.group and r.group != group:
            lines.append("| *" + r.group + "* |" + " |" * (len(header) - 1))
            group = r.group
        avg = _fmt(r.avg)
        if r.avg is not None and r.avg_count < len(benches):
            avg += f" ({r.avg_count}/{len(benches)})"
        cells = [r.label, _tokens_cell(r), _fmt_tflops(r.vision_tflops), *(_score_cell(r, b) for b in benches), avg]
        if has_printed:
            printed = _fmt(r.printed_avg)
            if r.mismatch:
                printed += " ⚠"
                where = f"{r.label} [{r.group}]" if r.group else r.label
                notes.append(
                    f"- ⚠ {where}: the printed Avg(%) {r.printed_avg:.1f} disagrees with its cells, which give {r.avg:.1f}."
                )
            cells.append(printed)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Avg(%): mean over the row's benchmarks of 100 × score / baseline score (MME-P as raw points); "
        "(k/n) marks a mean over k of n benchmarks; (val) marks a local val-split proxy for a server-scored benchmark."
    )
    twig_rows = [r for r in rows if r.twig_note]
    if twig_rows:
        lines.append("")
        lines.append("TwigVLM rows:")
        lines.extend(f"- {r.label}: {r.twig_note}." for r in twig_rows)
    if notes:
        lines.append("")
        lines.append("Printed averages that disagree with their cells (tolerance 0.1):")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


def write_csv(path: str, rows: Sequence[Row], benches: Sequence[str]) -> None:
    fields = ["label", "group", "avg_vision_tokens", "vision_tflops", *benches, "avg_percent", "avg_benchmarks", "printed_avg", "avg_mismatch", "proxy_benchmarks",
              "visible_vision_tokens"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow(
                [
                    r.label, r.group,
                    "" if r.avg_vision_tokens is None else r.avg_vision_tokens,
                    "" if r.vision_tflops is None else r.vision_tflops,
                    *("" if b not in r.scores else r.scores[b] for b in benches),
                    "" if r.avg is None else round(r.avg, 4), r.avg_count,
                    "" if r.printed_avg is None else r.printed_avg,
                    int(r.mismatch), " ".join(sorted(r.proxy)),
                    "" if r.visible_tokens is None else r.visible_tokens,
                ]
            )


def _method_name(label: str) -> str:
    """The series a row belongs to in the chart: the label without a trailing schedule/budget tag."""
    return re.sub(r"\s*[\[(].*[\])]\s*$", "", label).strip() or label


def write_chart(path: str, rows: Sequence[Row], title: str) -> bool:
    """Avg(%) against average vision tokens, one line per method; returns False when nothing can be plotted."""
    points = [r for r in rows if r.avg is not None and _budget(r)]
    if not points:
        logger.warning("no row has both Avg(%%) and average vision tokens; chart skipped")
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Row]] = {}
    for r in points:
        series.setdefault(_method_name(r.label), []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, members in series.items():
        members = sorted(members, key=lambda r: _budget(r) or 0)
        ax.plot([_budget(r) for r in members], [r.avg for r in members], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ticks = sorted({float(_budget(r)) for r in points if _budget(r)})
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("average vision tokens per layer (VoCo: the tokens the text sees)")
    ax.set_ylabel("Avg(%) of baseline")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def build_report(rows: list[Row], baseline: str | None, output_dir: str, name: str, benches: Sequence[str] | None = None) -> dict[str, str]:
    """Computes averages and writes the Markdown, CSV and PNG; returns the written paths by kind."""
    if benches is None:
        present = {b for r in rows for b in r.scores}
        benches = [b for b in BENCHMARK_NAMES if b in present]
    compute_averages(rows, baseline, benches)
    os.makedirs(output_dir, exist_ok=True)
    paths = {"md": os.path.join(output_dir, f"{name}.md"), "csv": os.path.join(output_dir, f"{name}.csv")}
    with open(paths["md"], "w", encoding="utf-8") as f:
        f.write(render_markdown(rows, benches))
    write_csv(paths["csv"], rows, benches)
    png = os.path.join(output_dir, f"{name}.png")
    if write_chart(png, rows, f"{name}: accuracy vs. vision tokens"):
        paths["png"] = png
    for r in rows:
        if r.mismatch:
            logger.warning("%s [%s]: printed Avg(%%) %.1f, cells give %.2f", r.label, r.group, r.printed_avg, r.avg)
    return paths


def load_rows(results_dirs: Iterable[str], tables: Iterable[str], paper_tables: Iterable[str]) -> list[Row]:
    rows: list[Row] = []
    for key in paper_tables:
        if key not in PAPER_TABLES:
            raise EvalDataError(f"unknown paper table {key!r}; known: {sorted(PAPER_TABLES)}")
        rows.extend(rows_from_table_csv(PAPER_TABLES[key], f"paper {key}"))
    for path in tables:
        with open(path, encoding="utf-8") as f:
            rows.extend(rows_from_table_csv(f.read(), path))
    for d in results_dirs:
        rows.extend(rows_from_results(d))
    return rows


def order_rows(rows: list[Row], baseline: str | None) -> list[Row]:
    """Table rows keep their order; result rows follow, the baseline first, then by descending vision tokens."""
    table = [r for r in rows if r.group]
    results = [r for r in rows if not r.group]
    results.sort(key=lambda r: (r.label != baseline, -(_budget(r) or 0), r.label))
    return table + results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.eval.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", action="append", default=[], help="folder of score JSON files (repeatable)")
    p.add_argument("--table", action="append", default=[], help="extra rows in the paper-table CSV format (repeatable)")
    p.add_argument("--paper-table", action="append", default=[], choices=sorted(PAPER_TABLES), help="include the paper's rows")
    p.add_argument("--baseline", default=None, help="label of the row Avg(%%) is relative to (rows may name their own)")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--name", default="table1", help="file stem of the outputs")
    p.add_argument("--benches", default=None,
                   help="comma-separated benchmark columns, in order (default: every benchmark present); the "
                        "ablation tables use mme,mmbench,gqa,vqav2,vizwiz,textvqa,mmstar")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.results_dir or args.table or args.paper_table):
        parser.error("give at least one of --results-dir, --table, --paper-table")
    rows = order_rows(load_rows(args.results_dir, args.table, args.paper_table), args.baseline)
    if not rows:
        raise EvalDataError("no results found")
    benches = None
    if args.benches:
        benches = [b.strip() for b in args.benches.split(",") if b.strip()]
        unknown = [b for b in benches if b not in BENCHMARK_NAMES]
        if unknown:
            parser.error(f"--benches: unknown benchmark(s) {unknown}; known: {list(BENCHMARK_NAMES)}")
    paths = build_report(rows, args.baseline, args.output_dir, args.name, benches)
    for kind, path in paths.items():
        logger.info("wrote %s: %s", kind, path)


if __name__ == "__main__":
    main()
