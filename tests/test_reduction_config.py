"""Schedules: validation messages, presets, averages and the Table 2 accounting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llava.eval.efficiency import LLM_SHAPES, vision_tflops
from llava.model.reduction import PRESETS, ReductionConfig, ReductionConfigError, parse_overrides, resolve_reduction


@pytest.mark.parametrize("name,avg", [("tok64", 64.0), ("tok48", 48.0), ("tok80", 80.03), ("pdrop", 270.0),
                                      ("mobilellama-tok64", 64.0), ("off", 576.0), ("fastv", 171.0)])
def test_preset_averages(name, avg):
    assert round(PRESETS[name].average_vision_tokens(32, 576), 2) == avg


def test_tiny_preset_average():
    assert PRESETS["tiny"].average_vision_tokens(8, 64) == 26.0


@pytest.mark.parametrize("kwargs,field", [
    ({"prune_layers": (10, 9), "keep_counts": (5, 1)}, "prune_layers"),
    ({"prune_layers": (10,), "keep_counts": (5, 1)}, "keep_counts"),
    ({"prune_layers": (10, 12), "keep_counts": (5, 10)}, "keep_counts"),
    ({"inject_layer": 0}, "inject_layer"),
    ({"inject_layer": 9, "prune_layers": (8,), "keep_counts": (5,)}, "prune_layers"),
    ({"prune_layers": (10,), "keep_counts": (5,), "exit_layer": 10}, "exit_layer"),
    ({"topk": "soft"}, "topk"),
])
def test_invalid_schedules_name_the_field(kwargs, field):
    with pytest.raises(ReductionConfigError, match=field):
        ReductionConfig(**kwargs)


@pytest.mark.parametrize("override", ["score_temperature=nan", "score_temperature=inf", "budget_weight=nan",
                                      "budget_weight=-inf", "budget_weight=1e999"])
def test_float_fields_must_be_finite(override):
    # NaN passes `< 0` and `<= 0` checks; before this check it reached training and was logged as loss 0.
    field = override.split("=")[0]
    with pytest.raises(ReductionConfigError, match=f"{field} must be a finite number"):
        resolve_reduction("tiny", override)
    with pytest.raises(ReductionConfigError, match=f"{field} must be a finite number"):
        ReductionConfig.from_dict({**PRESETS["tiny"].to_dict(), field: float("nan")})
    with pytest.raises(ReductionConfigError, match=f"{field} must be a finite number"):
        ReductionConfig(**{field: "1.0"})


def test_depth_dependent_validation():
    with pytest.raises(ReductionConfigError, match="exit_layer"):
        PRESETS["tok64"].validate_for(num_layers=16, num_vision_tokens=576)
    with pytest.raises(ReductionConfigError, match="exceed the number of vision tokens"):
        PRESETS["tok64"].validate_for(num_layers=32, num_vision_tokens=100)
    PRESETS["tok64"].validate_for(32, 576)


def test_a_schedule_without_exit_is_refused_by_depth_not_by_a_phantom_exit():
    """pdrop-64 / mustdrop-64 have no exit; on 8 layers they were refused with "must be < exit_layer=9", the
    resolved never-exit value that names no layer of the schedule."""
    for name in ("pdrop-64", "mustdrop-64", "fastv"):
        with pytest.raises(ReductionConfigError) as e:
            PRESETS[name].validate_for(2, 576)
        assert "(the schedule has no exit)" in str(e.value) and "exit_layer=" not in str(e.value), str(e.value)
    with pytest.raises(ReductionConfigError, match=r"prune layer 16 must be < num_layers=8 \(the schedule has no exit\)"):
        PRESETS["pdrop-64"].validate_for(8, 576)
    with pytest.raises(ReductionConfigError, match=r"exit_layer=10 must be <= num_layers \+ 1 = 9"):  # a real exit
        ReductionConfig(prune_layers=(5,), keep_counts=(4,), exit_layer=10).validate_for(8, 64)


def test_overrides_parse_typed_values_without_eval():
    o = parse_overrides(["exit_layer=24", "keep_counts=215,10,5,1", "topk=hard", "learn_threshold=true"])
    assert o == {"exit_layer": 24, "keep_counts": (215, 10, 5, 1), "topk": "hard", "learn_threshold": True}
    cfg = resolve_reduction("tok64", "exit_layer=24")
    assert cfg.exit_layer == 24 and cfg.keep_counts == (215, 10, 5, 1) and "exit_layer=24" in cfg.name
    with pytest.raises(ReductionConfigError, match="unknown reduction field"):
        parse_overrides(["exitlayer=3"])
    with pytest.raises(ReductionConfigError, match="cannot parse"):
        parse_overrides(["inject_layer=__import__('os')"])
    with pytest.raises(ReductionConfigError, match="unknown reduction preset"):
        resolve_reduction("tok65")


def test_round_trip_dict():
    cfg = PRESETS["tok80"]
    assert ReductionConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("llm,schedule,tflops", [
    ("vicuna-7b", "off", 3.82), ("vicuna-7b", "pdrop", 1.78), ("vicuna-7b", "tok64", 0.42),
    ("mobilellama-2.7b", "off", 1.52), ("mobilellama-2.7b", "pdrop", 0.70), ("mobilellama-2.7b", "mobilellama-tok64", 0.17),
])
def test_table2_tflops(llm, schedule, tflops):
    L, d, m = LLM_SHAPES[llm]
    counts = PRESETS[schedule].counts_per_layer(L, 576)
    assert round(vision_tflops(counts, d, m), 2) == pytest.approx(tflops, abs=0.011)


def test_efficiency_cli_prints_key_values(capsys):
    # one real command line (the module runs as a program); the other cases call its main() in this process
    out = subprocess.run([sys.executable, "-m", "llava.eval.efficiency", "--llm", "vicuna-7b", "--schedule", "tok64",
                          "--text-tokens", "100"], capture_output=True, text=True, check=True).stdout
    kv = dict(line.split("=", 1) for line in out.strip().splitlines())
    assert kv["avg_vision_tokens"] == "64.00" and kv["vision_tflops"] == "0.42"
    assert float(kv["total_tflops"]) > float(kv["vision_tflops"])
    from llava.eval.efficiency import main

    main(["--layers", "32", "--hidden", "4096", "--ffn", "11008", "--counts", "576x8,288x8,144x8,72x8"])
    kv = dict(line.split("=", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert kv["avg_vision_tokens"] == "270.00" and kv["vision_tflops"] == "1.78"
    assert main(["--llm", "vicuna-7b", "--counts", "576x8"]) == 2
    assert "32 layers" in capsys.readouterr().err
