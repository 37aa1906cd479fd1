"""Reading and writing the evaluation file formats, with errors that name the file and the line.

Benchmark files come from many sources (LLaVA's eval.zip, official releases, the MMBench TSVs); a malformed or
missing file must stop the run with a message that says which file and which line, never a bare KeyError.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any


class EvalDataError(ValueError):
    """Bad or missing evaluation input; the message names the file (and line) at fault."""


def require_file(path: str, what: str) -> str:
    """Returns ``path`` if it is a readable file, else raises with a message saying what the file was for."""
    if not path:
        raise EvalDataError(f"no {what} given")
    if not os.path.isfile(path):
        raise EvalDataError(f"{what} not found: {path}")
    return path


def read_json(path: str, what: str = "JSON file") -> Any:
    """Loads a whole JSON document; the error names the file when it is missing or not JSON."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise EvalDataError(f"{what} {path} is not valid JSON: {e}") from None


def iter_jsonl(path: str, what: str = "JSONL file") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, record)`` for every non-blank line; a malformed line is an error naming its number."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{what} {path}, line {lineno}: malformed JSON ({e})") from None
            if not isinstance(record, dict):
                raise EvalDataError(f"{what} {path}, line {lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str, what: str = "JSONL file") -> list[dict[str, Any]]:
    return [record for _, record in iter_jsonl(path, what)]


def read_json_records(path: str, what: str) -> list[dict[str, Any]]:
    """Reads a list of objects stored either as a JSON array or as JSON lines.

    Some releases ship the same data in both forms (the POPE files are JSON lines, some mirrors re-save them as
    one array), so the reader accepts either.
    """
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        head = f.read(1024).lstrip()
    if head.startswith("["):
        data = read_json(path, what)
        if not all(isinstance(x, dict) for x in data):
            raise EvalDataError(f"{what} {path}: expected a JSON array of objects")
        return data
    return read_jsonl(path, what)


def write_json(path: str, data: Any, indent: int | None = 1) -> None:
    """Writes atomically so an interrupted run never leaves a half-written result for the report to read."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=indent)
        f.write("\n")
    os.replace(tmp, path)


def write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_tsv(path: str, what: str, required_columns: Iterable[str] = ()) -> list[dict[str, str]]:
    """Reads a pandas-written TSV (quoted fields may hold tabs and newlines) into a list of row dicts.

    The csv module is used instead of pandas so that cell values stay the exact strings in the file; the
    pandas missing-value convention that LLaVA relies on is applied explicitly by the callers (see
    ``is_missing_cell``).
    """
    require_file(path, what)
    csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 images
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise EvalDataError(f"{what} {path} is empty") from None
        missing = [c for c in required_columns if c not in header]
        if missing:
            raise EvalDataError(f"{what} {path} lacks column(s) {missing}; it has {header}")
        rows = []
        for rowno, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise EvalDataError(
                    f"{what} {path}, row {rowno}: {len(values)} fields but the header has {len(header)}"
                )
            rows.append(dict(zip(header, values)))
    return rows


# pandas.read_csv turns these cell strings into NaN by default; LLaVA's is_none() additionally drops "none"/"nan"
# in any case. Options that read as missing end the option list, exactly as in upstream MMBench prompting.
PANDAS_NA_STRINGS = frozenset(
    {
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    }
)


def is_missing_cell(value: str | None) -> bool:
    """True when upstream (pandas + LLaVA's is_none) would treat this TSV cell as missing."""
    if value is None:
        return True
    return value in PANDAS_NA_STRINGS or value.lower() in ("nan", "none")


def qid_key(qid: Any) -> str:
    """Question ids are ints in some files and strings in others; joins use the string form."""
    return str(qid)


def answer_key(record: dict[str, Any]) -> str:
    """The id that identifies an answer line: its ``uid`` when the benchmark needs one, else its question id.

    TextVQA's LLaVA question file uses the image id as ``question_id``, so several questions share it; its
    adapter gives each question a ``uid`` and resume/merge/coverage checks use that instead.
    """
    return str(record["uid"]) if record.get("uid") is not None else qid_key(record.get("question_id"))


def limit_arg(value: str) -> int | None:
    """``--limit`` of the runner, the merge and the scorer (the eval scripts' ``LIMIT``): the first N questions of
    the question file, as its benchmark adapter reads them. A whole number >= 1, or empty (scripts pass "$LIMIT")
    for all of them."""
    from llava.cli_types import positive_int

    return positive_int(value) if value.strip() else None
