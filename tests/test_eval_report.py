"""The report on the paper's own Table 1 / Table 2 cells, and end to end from a folder of score files."""

from __future__ import annotations

import csv
import json

import pytest

from llava.eval import report
from llava.eval.paper_tables import TABLE1_CSV, TABLE2_CSV
from llava.eval.report import Row, compute_averages, relative_average, rows_from_table_csv

BASELINE = "LLaVA-1.5-7B*"


def _table1() -> dict[tuple[str, str], Row]:
    rows = rows_from_table_csv(TABLE1_CSV, "table1")
    compute_averages(rows, BASELINE)
    return {(r.group, r.label): r for r in rows}


def test_relative_average_by_hand() -> None:
    baseline = {"gqa": 50.0, "mme": 1000.0}
    # GQA 40/50 = 80%, MME-P as raw points 1100/1000 = 110% -> (80 + 110) / 2 = 95
    assert relative_average({"gqa": 40.0, "mme": 1100.0}, baseline) == (pytest.approx(95.0), 2)
    # a row with only GQA averages over that one benchmark
    assert relative_average({"gqa": 40.0}, baseline) == (pytest.approx(80.0), 1)
    assert relative_average({"pope": 80.0}, baseline) == (None, 0)


@pytest.mark.parametrize(
    "group, label, printed",
    [
        ("80 tokens", "FastV", 87.9),
        ("80 tokens", "PDrop", 96.8),  # cells give 96.74
        ("80 tokens", "TwigVLM", 97.9),
        ("64 tokens", "HiDrop (ours)", 98.3),
        ("48 tokens", "HiDrop (ours)", 96.5),
    ],
)
def test_named_rows_reproduce_printed_avg(group: str, label: str, printed: float) -> None:
    row = _table1()[(group, label)]
    assert row.avg == pytest.approx(printed, abs=0.1)
    assert row.avg_count == 11
    assert not row.mismatch


def test_every_printed_avg_matches_except_hidrop_80() -> None:
    rows = _table1()
    checked = 0
    for key, row in rows.items():
        if row.printed_avg is None:
            continue
        checked += 1
        if key == ("80 tokens", "HiDrop (ours)"):
            # Printed 98.4, but the mean of its 11 ratios is 97.67: the report must flag it.
            assert row.avg == pytest.approx(97.67, abs=0.01)
            assert row.mismatch
        else:
            assert abs(row.avg - row.printed_avg) <= 0.1, key
            assert not row.mismatch, key
    assert checked == 20  # every row but the original LLaVA-1.5-7B one prints an Avg(%)


def test_hidrop_80_by_hand() -> None:
    # The 11 ratios of HiDrop's 80-token row to LLaVA-1.5-7B*:
    # 1467.0/1506.5=0.97378 63.7/64.7=0.98454 56.3/58.1=0.96902 61.3/61.9=0.99031 76.6/78.5=0.97580
    # 67.5/69.5=0.97122 51.4/50.1=1.02595 54.9/58.2=0.94330 86.6/86.8=0.99770 65.3/66.2=0.98640
    # 31.2/33.7=0.92582 -> sum 10.74384 / 11 = 0.97671 -> 97.7, not the printed 98.4.
    row = _table1()[("80 tokens", "HiDrop (ours)")]
    assert round(row.avg, 1) == 97.7


def test_table2_each_backbone_against_its_own_vanilla_row() -> None:
    rows = rows_from_table_csv(TABLE2_CSV, "table2")
    compute_averages(rows, None)
    for r in rows:
        assert r.avg_count == 5  # Table 2 averages MME-P, MMB, GQA, VizWiz, TextVQA
        assert abs(r.avg - r.printed_avg) <= 0.1, r.label
    # Vicuna-7B HiDrop: (1474.3/1506.5 + 63.2/64.7 + 60.5/61.9 + 52.6/50.1 + 55.2/58.2) / 5 = 0.98624
    hidrop = next(r for r in rows if r.label == "Vicuna-7B HiDrop")
    assert hidrop.avg == pytest.approx(98.62, abs=0.01)


def _write_results(root, rows: list[Row], tflops_from_schedule: bool = False) -> None:
    """One score JSON per (row, benchmark), as llava.eval.score writes them."""
    for i, r in enumerate(rows):
        for bench, value in r.scores.items():
            run = {"avg_vision_tokens": r.avg_vision_tokens, "vision_tflops": r.vision_tflops}
            rec = {"bench": bench, "label": r.label, "score": value, "metric": "x", "num_scored": 1, "num_unparsed": 0, "run": run, "proxy": False}
            path = root / f"row{i}" / f"{bench}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rec))


def test_end_to_end_from_results_folder(tmp_path) -> None:
    rows = [r for r in rows_from_table_csv(TABLE1_CSV, "t1") if r.group in ("576 tokens", "64 tokens")]
    for r in rows:  # labels of score files are unique per checkpoint + schedule
        if r.group == "64 tokens":
            r.label = f"{r.label} (64)"
    _write_results(tmp_path / "results", rows)
    out = tmp_path / "out"
    report.main(["--results-dir", str(tmp_path / "results"), "--baseline", BASELINE, "--output-dir", str(out)])
    with open(out / "table1.csv") as f:
        table = {r["label"]: r for r in csv.DictReader(f)}
    assert float(table["HiDrop (ours) (64)"]["avg_percent"]) == pytest.approx(98.31, abs=0.01)
    assert float(table["FastV (64)"]["avg_percent"]) == pytest.approx(82.8, abs=0.1)
    assert float(table["HiDrop (ours) (64)"]["vision_tflops"]) == pytest.approx(0.42)
    md = (out / "table1.md").read_text()
    assert md.splitlines()[0].startswith("| Method | Avg. vis. tokens | Infer TFLOPs | MME-P | MMB | MMB-CN | GQA")
    assert "| HiDrop (ours) (64) | 64 | 0.42 | 1473.3 |" in md
    assert (out / "table1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_flags_the_paper_row(tmp_path) -> None:
    report.main(["--paper-table", "table1", "--baseline", BASELINE, "--output-dir", str(tmp_path), "--name", "paper"])
    md = (tmp_path / "paper.md").read_text()
    assert "HiDrop (ours) [80 tokens]: the printed Avg(%) 98.4 disagrees with its cells, which give 97.7." in md
    with open(tmp_path / "paper.csv") as f:
        flagged = [(r["label"], r["group"]) for r in csv.DictReader(f) if r["avg_mismatch"] == "1"]
    assert flagged == [("HiDrop (ours)", "80 tokens")]


def test_efficiency_recomputed_from_the_schedule(tmp_path) -> None:
    """A result whose run info has the schedule but no figures gets them from the accounting functions."""
    from llava.eval.efficiency import vision_tflops
    from llava.model.reduction.config import PRESETS

    run = {"reduction": PRESETS["tok64"].to_dict(), "llm": {"num_layers": 32, "hidden": 4096, "ffn": 11008}, "num_vision_tokens": 576}
    rec = {"bench": "gqa", "label": "hidrop-tok64", "score": 60.5, "run": run}
    (tmp_path / "gqa.json").write_text(json.dumps(rec))
    (row,) = report.rows_from_results(str(tmp_path))
    # tok64: 576 on layers 9-10, 215 on 11-14, 10 on 15-16, 5 on 17-18, 1 on 19-24, 0 elsewhere
    # -> (576*2 + 215*4 + 10*2 + 5*2 + 1*6) / 32 = 2048 / 32 = 64
    assert row.avg_vision_tokens == pytest.approx(64.0)
    counts = [0] * 8 + [576] * 2 + [215] * 4 + [10] * 2 + [5] * 2 + [1] * 6 + [0] * 8
    assert row.vision_tflops == pytest.approx(vision_tflops(counts, 4096, 11008))
    assert row.vision_tflops == pytest.approx(0.42, abs=0.005)  # Table 2: 0.42 TFLOPs
