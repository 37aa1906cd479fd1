"""Two ways of counting a prune layer's vision tokens (docs/Baselines.md, "Counting vision tokens"): at its input
(this project, the paper's tables) and after its filter (MustDrop's released counter). Both are reported by the
decoder, the schedules, the solver, the eval runner's records and `llava.eval.efficiency`; MustDrop's released
per-benchmark thresholds are what the eval scripts run."""

from __future__ import annotations

import pytest
import torch
from test_mustdrop import MUSTDROP, _images_with_flat_regions, _model
from tiny import random_batch

from llava.eval.efficiency import main as efficiency_main
from llava.model import PRESETS, ReductionConfig
from llava.model.reduction.config import BENCHMARK_PRESETS, preset_for_benchmark
from llava.model.reduction.solver import solve_keep_counts


def authors_counter(num_layers: int, tokens_in: int, filters: dict[int, int]) -> float:
    """MustDrop's released bookkeeping, spelled out: run each layer, apply its filter (if it is a filter layer),
    then append the vision tokens left; average over the layers. ``filters`` maps a 1-based layer to its count
    after the filter."""
    image_tokens, log = tokens_in, []
    for layer in range(1, num_layers + 1):
        if layer in filters:
            image_tokens = filters[layer]
        log.append(image_tokens)
    return sum(log) / num_layers


def test_worked_example_from_the_issue():
    """450 tokens after merging, 60 / 55 / 50 / 45 after the four filters: 86.7 on our count, 74.1 on theirs."""
    red = ReductionConfig(name="x", prune_layers=(3, 7, 11, 15), keep_counts=(60, 55, 50, 45), topk="hard")
    assert red.average_vision_tokens(32, 450) == pytest.approx(86.72, abs=0.005)
    assert red.average_vision_tokens(32, 450, "after_filter") == pytest.approx(74.06, abs=0.005)
    assert red.average_vision_tokens(32, 450, "after_filter") == authors_counter(32, 450, dict(zip(red.prune_layers,
                                                                                                  red.keep_counts)))


@pytest.mark.parametrize("name", ["tok64", "tok48", "fastv-64", "pdrop-64", "pdrop-paper", "tiny", "off"])
def test_after_filter_differs_by_the_cuts_over_the_layers(name):
    red = PRESETS[name]
    L, N = (8, 64) if name == "tiny" else (32, 576)
    entering, after = red.average_vision_tokens(L, N), red.average_vision_tokens(L, N, "after_filter")
    before = [N, *red.keep_counts]
    assert entering - after == pytest.approx(sum(b - k for b, k in zip(before, red.keep_counts)) / L)


def test_unknown_convention_is_refused():
    with pytest.raises(ValueError, match="count convention"):
        PRESETS["tok64"].counts_per_layer(32, 576, convention="exiting")


@pytest.mark.parametrize("kwargs", [dict(inject=1, exit_layer=-1, prune_layers=(2, 8, 16)),
                                    dict(inject=9, exit_layer=25, prune_layers=(10, 14, 16, 18), tail=(10, 5, 1))])
def test_solver_hits_the_budget_on_either_convention(kwargs):
    tail = kwargs.pop("tail", None)
    for convention in ("entering", "after_filter"):
        solved = solve_keep_counts(64, 32, kwargs["inject"], kwargs["exit_layer"], kwargs["prune_layers"], tail,
                                   convention=convention)
        red = ReductionConfig(name="s", inject_layer=kwargs["inject"], prune_layers=kwargs["prune_layers"],
                              keep_counts=solved.keep_counts, exit_layer=kwargs["exit_layer"])
        assert red.average_vision_tokens(32, 576, convention) == pytest.approx(solved.average)
        assert abs(solved.average - 64) < 0.2
    # entering is what every preset was solved with
    assert solve_keep_counts(64, 32, 1, -1, (2, 8, 16)).keep_counts == PRESETS["pdrop-64"].keep_counts


@pytest.mark.parametrize("schedule", [
    dict(MUSTDROP),
    {"inject_layer": 2, "prune_layers": (2, 4), "keep_counts": (20, 6), "exit_layer": 6, "topk": "hard"},
], ids=["mustdrop-shaped", "topk-with-exit"])
def test_decoder_counts_match_the_schedule_and_the_authors_rule(schedule):
    model = _model(4)
    red = ReductionConfig(name="c", **schedule).validate_for(6, 64)
    batch = random_batch(model, [21, 16, 18], [3, 2, None], left_pad=True, with_labels=False, seed=4)
    batch["images"] = _images_with_flat_regions(batch, 4)
    with torch.no_grad():
        out = model(**batch, reduction=red, count_vision=True)
    counts = out.decoder.vision_counts
    entering, after = counts.entering.tolist(), counts.after_filter.tolist()
    for b in range(3):
        kept = {}
        for st in out.stages:
            kept[st.layer] = int(st.keep_valid[b].sum()) if st.keep_valid is not None else st.keep.shape[1]
        if b == 2:  # the text-only row has no vision tokens on either count
            assert entering[b] == after[b] == [0] * 6
            continue
        first = next(x for x in entering[b] if x)  # what entered the first layer with vision
        inject = entering[b].index(first) + 1
        rule = [0] * (inject - 1) + [first] * (6 - inject + 1)
        for layer in range(1, 7):  # the authors' rule from the stage records: a filter layer counts its survivors
            if layer in kept:
                rule[layer - 1:] = [kept[layer]] * (6 - layer + 1)
        exit_layer = red.resolved_exit(6)
        rule = [c if layer < exit_layer else 0 for layer, c in enumerate(rule, start=1)]
        assert after[b] == rule
        # a non-prune layer counts the same on both conventions
        assert all(e == a for layer, (e, a) in enumerate(zip(entering[b], after[b]), start=1) if layer not in kept)
    if not red.data_dependent:
        mean_after = [sum(after[b][i] for b in range(2)) / 2 for i in range(6)]
        assert mean_after == red.counts_per_layer(6, 64, convention="after_filter")


def test_efficiency_prints_both_counts(capsys):
    assert efficiency_main(["--llm", "vicuna-7b", "--schedule", "tok64"]) == 0
    out = capsys.readouterr().out
    assert "avg_vision_tokens=64.00" in out and "avg_vision_tokens_after_filter=46.03" in out
    assert efficiency_main(["--llm", "vicuna-7b", "--solve", "--target-avg", "64", "--prune-layers", "2,8,16",
                            "--count-convention", "after_filter"]) == 0
    out = capsys.readouterr().out
    assert "keep_counts=158,42,11" in out and "avg_vision_tokens_after_filter=63.97" in out


def test_released_per_benchmark_thresholds():
    viz = PRESETS["mustdrop-64-vizwiz"]
    assert (viz.global_thr, viz.individual_thr) == (0.005, 0.001)
    assert viz.to_dict() | {"name": "", "global_thr": 0, "individual_thr": 0} == (
        PRESETS["mustdrop-64"].to_dict() | {"name": "", "global_thr": 0, "individual_thr": 0})
    assert preset_for_benchmark("mustdrop-64", "vizwiz") == "mustdrop-64-vizwiz"
    assert preset_for_benchmark("mustdrop-64", "textvqa") == "mustdrop-64"
    assert preset_for_benchmark("mustdrop-128", "vizwiz") == "mustdrop-128"
    assert preset_for_benchmark(None, "vizwiz") is None
    assert all(variant in PRESETS for variant in BENCHMARK_PRESETS.values())


def test_the_vizwiz_runner_runs_the_vizwiz_thresholds(tmp_path, monkeypatch):
    """Through the runner, as scripts/eval/vizwiz.sh calls it: the run identity names the released variant."""
    import json

    from test_eval_runner import _args, _run, make_gqa_data

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    qfile, img_dir = make_gqa_data(tmp_path)
    for bench, expected in (("vizwiz", "mustdrop-64-vizwiz"), ("gqa", "mustdrop-64")):
        answers = tmp_path / bench / "1_0.jsonl"
        args = _args(qfile, img_dir, answers, bench=bench, reduction_preset="mustdrop-64")
        _run(args)
        info = json.loads((tmp_path / bench / "1_0.jsonl.run.json").read_text())
        assert info["reduction_preset"] == expected
        assert info["schedule"] == PRESETS[expected].to_dict()


def test_compare_baselines_solves_its_methods_on_the_stated_count():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_baselines.py"
    spec = importlib.util.spec_from_file_location("compare_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entering = module.fixed_methods("entering")
    assert entering["FastV (K=2)"].keep_counts == (13,) and entering["PDrop (2,4,6)"].keep_counts == (26, 10, 4)
    assert entering["HiDrop (tiny)"].keep_counts == PRESETS["tiny"].keep_counts
    for convention in ("entering", "after_filter"):
        for name, red in module.fixed_methods(convention).items():
            if name != "off":
                assert abs(red.average_vision_tokens(8, 64, convention) - module.BUDGET) <= 0.5, (name, convention)
    assert module.fixed_methods("after_filter")["FastV (K=2)"].keep_counts == (21,)
