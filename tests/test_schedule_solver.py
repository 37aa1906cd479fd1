"""The keep-count solver: it reproduces the paper's presets from their tails and the budget presets of Table 1."""

from __future__ import annotations

import pytest

from llava.eval.efficiency import main as efficiency_main
from llava.model.reduction import PRESETS, ReductionConfigError
from llava.model.reduction.solver import solve_keep_counts


@pytest.mark.parametrize("name,target,prune", [("tok64", 64, (10, 14, 16, 18)), ("tok48", 48, (10, 14, 16, 18)),
                                               ("tok80", 80, (10, 13, 16, 19))])
def test_paper_presets_from_their_tails(name, target, prune):
    solved = solve_keep_counts(target, 32, 9, 25, prune, tail=(10, 5, 1))
    assert solved.keep_counts == PRESETS[name].keep_counts
    assert solved.average == pytest.approx(PRESETS[name].average_vision_tokens(32))


@pytest.mark.parametrize("method,prune", [("fastv", (2,)), ("pdrop", (2, 8, 16))])
@pytest.mark.parametrize("budget", [80, 64, 48])
def test_budget_presets_are_the_solver_output(method, prune, budget):
    preset = PRESETS[f"{method}-{budget}"]
    solved = solve_keep_counts(budget, 32, 1, -1, prune)
    assert preset.prune_layers == prune and preset.keep_counts == solved.keep_counts
    avg = preset.average_vision_tokens(32)
    assert abs(avg - budget) < 0.2
    # no other integer count of the first stage comes closer
    for delta in (-1, 1):
        other = (preset.keep_counts[0] + delta, *preset.keep_counts[1:])
        if other[0] < 0 or (len(other) > 1 and other[0] < other[1]):
            continue
        alt = type(preset)(name="x", prune_layers=prune, keep_counts=other).average_vision_tokens(32)
        assert abs(alt - budget) >= abs(avg - budget)


def test_geometric_decay_is_pdrops_uniform_ratio():
    assert solve_keep_counts(270, 32, 1, -1, (8, 16, 24)).keep_counts == (288, 144, 72)  # lambda = 0.5
    counts = solve_keep_counts(64, 32, 9, 25, (10, 14, 16, 18)).keep_counts
    assert list(counts) == sorted(counts, reverse=True)
    drops = [a - b for a, b in zip((576, *counts), counts)]
    assert drops == sorted(drops, reverse=True)  # concave: fast, then slow


@pytest.mark.parametrize("kwargs,message", [
    ({"target_avg": 30, "prune_layers": (2, 8, 16)}, "out of reach"),
    ({"target_avg": 600, "prune_layers": (2,)}, "out of reach"),
    ({"target_avg": 64, "prune_layers": ()}, "at least one prune layer"),
    ({"target_avg": 64, "prune_layers": (2, 8), "tail": (5, 1)}, "--tail has 2 counts"),
    ({"target_avg": 48, "prune_layers": (2, 8), "tail": (300,)}, "smaller tail"),
    ({"target_avg": 64, "prune_layers": (40,)}, "prune layer"),
])
def test_impossible_requests_are_named(kwargs, message):
    with pytest.raises(ReductionConfigError, match=message):
        solve_keep_counts(num_layers=32, inject=1, exit_layer=-1, **kwargs)


def test_cli_prints_a_ready_schedule(capsys):
    assert efficiency_main(["--llm", "vicuna-7b", "--solve", "--target-avg", "48", "--inject", "9", "--exit", "25",
                            "--prune-layers", "10,14,16,18", "--tail", "10,5,1"]) == 0
    out = capsys.readouterr().out
    assert 'REDUCTION_OVERRIDES="inject_layer=9 prune_layers=10,14,16,18 keep_counts=87,10,5,1 exit_layer=25"' in out
    assert "avg_vision_tokens=48.00" in out and "vision_tflops=" in out
    assert efficiency_main(["--llm", "vicuna-7b", "--solve", "--target-avg", "64"]) == 2
    assert efficiency_main(["--llm", "vicuna-7b", "--solve", "--target-avg", "64", "--prune-layers", "2,x"]) == 2
    assert efficiency_main(["--llm", "vicuna-7b", "--solve", "--target-avg", "nan", "--prune-layers", "2"]) == 2
    assert "finite" in capsys.readouterr().err
