"""`python -m llava.eval.efficiency`: bad inputs are named errors with exit code 2, never nonsense figures."""

from __future__ import annotations

import pytest

from llava.eval.efficiency import main, parse_counts

SHAPE = ["--layers", "4", "--hidden", "64", "--ffn", "128"]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """Exit code (argparse's own errors exit through SystemExit), stdout and stderr."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("entry", ["5x", "x3", "-5x2", "5x0", "5x-1", "+5", "5.0", "5 x2", "fivex2", "5x2x2"])
def test_malformed_counts_entry_is_named(entry: str) -> None:
    with pytest.raises(ValueError, match="bad --counts entry"):
        parse_counts(f"576x2,{entry}")


def test_counts_parse() -> None:
    assert parse_counts("3x2, 2,0x1") == [3, 3, 2, 0]


@pytest.mark.parametrize("counts,message", [
    ("99999x4", "more than the image's 576"),  # before: a reduction of -855%
    ("577,10,10,10", "more than the image's 576"),
    ("5x", "bad --counts entry '5x'"),  # before: read as one layer of 5
    ("x3", "bad --counts entry 'x3'"),
    ("-5x2,5x2", "bad --counts entry '-5x2'"),  # before: negative token counts
    ("5x0,5x4", "bad --counts entry '5x0'"),
    ("", "describes 0 layers"),  # before: silently fell back to the 'off' schedule
    ("5x3", "describes 3 layers but the model has 4"),
])
def test_bad_counts_exit_2(capsys, counts: str, message: str) -> None:
    rc, out, err = _run([*SHAPE, f"--counts={counts}"], capsys)
    assert rc == 2 and out == "" and err.startswith("error: ") and message in err


def test_counts_within_num_vision_tokens(capsys) -> None:
    rc, out, _ = _run([*SHAPE, "--counts", "16,8,0,0", "--num-vision-tokens", "16"], capsys)
    assert rc == 0 and "avg_vision_tokens=6.00" in out
    rc, _, err = _run([*SHAPE, "--counts", "17,8,0,0", "--num-vision-tokens", "16"], capsys)
    assert rc == 2 and "more than the image's 16" in err


@pytest.mark.parametrize("flag,value,message", [
    ("--text-tokens", "-100", "must be >= 0"),  # before: negative TFLOPs
    ("--layers", "0", "must be >= 1"),
    ("--layers", "-3", "must be >= 1"),
    ("--hidden", "0", "must be >= 1"),
    ("--ffn", "-1", "must be >= 1"),
    ("--num-vision-tokens", "0", "must be >= 1"),
    ("--hidden", "4k", "expected a whole number"),
])
def test_out_of_range_numbers_exit_2(capsys, flag: str, value: str, message: str) -> None:
    rc, out, err = _run(["--llm", "vicuna-7b", "--schedule", "tok64", f"{flag}={value}"], capsys)
    assert rc == 2 and out == "" and flag in err and message in err


def test_zero_text_tokens_is_allowed(capsys) -> None:
    rc, out, _ = _run(["--llm", "vicuna-7b", "--schedule", "tok64", "--text-tokens", "0"], capsys)
    assert rc == 0 and "text_tokens=0" in out
