"""The evaluation runner is trustworthy: it never reuses answers of other weights, questions or settings, it
repairs or names broken answer files, it refuses concurrent writers, and scoring nothing is an error.

All runs use the fake backend of test_eval_runner (no real model); checkpoints are folders of small files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_eval_runner import _args, _run, _texts, fake_checkpoint, make_gqa_data

from llava.eval import fingerprint, merge, run_benchmark, score
from llava.eval.files import EvalDataError
from llava.eval.fingerprint import FingerprintCache, checkpoint_fingerprint, weight_files
from llava.eval.run_benchmark import describe_changes

REPO = Path(__file__).resolve().parent.parent
NUM_QUESTIONS = 7  # make_gqa_data


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """A private fingerprint cache that caches even files written a moment ago, so that every test below also
    exercises the cache (the racy-window rule has its own test)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(fingerprint, "RACY_WINDOW_NS", 0)


@pytest.fixture()
def gqa_data(tmp_path):
    return make_gqa_data(tmp_path)


def _no_load(*_a):
    pytest.fail("the model was loaded although nothing was left to answer")


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrites ``path`` in place with same-size content and restores its mtime: size, mtime and inode are
    unchanged, only ctime (which user space cannot set) tells that the file was rewritten."""
    before = os.stat(path)
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    # The kernel's ctime clock is coarse; wait until the rewrite is visible in it, as it is for any real rewrite.
    while os.stat(path).st_ctime_ns == before.st_ctime_ns:
        time.sleep(0.01)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def _run_id(answers: Path) -> str:
    return json.loads(Path(f"{answers}.run.json").read_text())["run_id"]


# ------------------------------------------------------------------------------------------ item 2: identity
def _change_weights(tmp_path: Path, qfile: Path, kw: dict) -> None:
    rewrite_in_place(fake_checkpoint(tmp_path) / "model.safetensors", b"FAKE weights 0123456789")


def _change_config(tmp_path: Path, qfile: Path, kw: dict) -> None:
    (fake_checkpoint(tmp_path) / "config.json").write_text(json.dumps({"reduction": {"name": "x", "exit_layer": 5}}))


def _change_question(tmp_path: Path, qfile: Path, kw: dict) -> None:
    lines = qfile.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["text"] = "what shape?"
    lines[2] = json.dumps(rec)
    qfile.write_text("\n".join(lines) + "\n")


def _change_max_new_tokens(tmp_path: Path, qfile: Path, kw: dict) -> None:
    kw["max_new_tokens"] = "64"


def _add_model_base(tmp_path: Path, qfile: Path, kw: dict) -> None:
    kw["model_base"] = str(fake_checkpoint(tmp_path, "base-llm"))


def _change_model_base_weights(tmp_path: Path, qfile: Path, kw: dict) -> None:
    rewrite_in_place(fake_checkpoint(tmp_path, "base-llm") / "model.safetensors", b"fake WEIGHTS 0123456789")


CHANGES = {
    # retraining into the same MODEL_PATH, without even a size or mtime change
    "weights": (_change_weights, {}, "weights fingerprint changed (model_path: model.safetensors)"),
    # the saved schedule lives in config.json
    "config": (_change_config, {}, "weights fingerprint changed (model_path: config.json); schedule changed ("),
    "question": (_change_question, {}, "question file changed"),
    "max_new_tokens": (_change_max_new_tokens, {}, "max_new_tokens 128 -> 64"),
    "model_base_added": (_add_model_base, {}, "weights fingerprint changed (model_base added)"),
    # LoRA / projector-only checkpoints: the base LLM's weights count too
    "model_base_weights": (_change_model_base_weights, {"model_base": "base-llm"}, "weights fingerprint changed (model_base: model.safetensors)"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changed_identity_restarts_and_keeps_the_old_answers(change, gqa_data, tmp_path, caplog) -> None:
    """Before: "7 already answered, 0 to do" and the old answers. Now the old file is moved aside to
    <answers>.stale-<old run_id>, the warning names what changed, and every question is answered again."""
    qfile, img_dir = gqa_data
    apply, kw, message = CHANGES[change]
    kw = dict(kw)
    if kw.get("model_base"):
        kw["model_base"] = str(fake_checkpoint(tmp_path, kw["model_base"]))
    out = tmp_path / "answers" / "1_0.jsonl"
    assert _run(_args(qfile, img_dir, out, **kw)) == NUM_QUESTIONS
    old_answers, old_run_id = out.read_text(), _run_id(out)
    assert run_benchmark.run(_args(qfile, img_dir, out, **kw), load=_no_load) == 0  # unchanged: reused

    apply(tmp_path, qfile, kw)
    caplog.clear()
    assert _run(_args(qfile, img_dir, out, **kw)) == NUM_QUESTIONS
    assert message in caplog.text
    stale = out.parent / f"1_0.jsonl.stale-{old_run_id}"
    assert stale.read_text() == old_answers
    assert json.loads(Path(f"{stale}.run.json").read_text())["run_id"] == old_run_id
    assert _run_id(out) != old_run_id
    assert {json.loads(line)["run_id"] for line in out.read_text().splitlines()} == {_run_id(out)}
    # and the new answers are reused from now on
    assert run_benchmark.run(_args(qfile, img_dir, out, **kw), load=_no_load) == 0


def test_on_mismatch_error_stops_and_names_the_change(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    out = tmp_path / "a.jsonl"
    _run(_args(qfile, img_dir, out))
    before = out.read_text()
    _change_weights(tmp_path, qfile, {})
    with pytest.raises(EvalDataError, match=r"weights fingerprint changed \(model_path: model.safetensors\).*--on-mismatch restart"):
        run_benchmark.run(_args(qfile, img_dir, out, on_mismatch="error"), load=_no_load)
    assert out.read_text() == before and not list(tmp_path.glob("a.jsonl.stale-*"))


def test_stale_names_never_overwrite(gqa_data, tmp_path) -> None:
    """A -> B -> A -> B: the second move of A's answers gets a numbered name instead of replacing the first."""
    qfile, img_dir = gqa_data
    out = tmp_path / "a.jsonl"
    for tokens in ("128", "64", "128", "64"):
        _run(_args(qfile, img_dir, out, max_new_tokens=tokens))
    names = sorted(p.name for p in tmp_path.glob("a.jsonl.stale-*") if not p.name.endswith(".run.json"))
    assert len(names) == 3 and len({n.split("stale-")[1][:12] for n in names}) == 2
    assert any(n.endswith("-2") for n in names)


def test_run_info_records_the_identity(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    out = tmp_path / "a.jsonl"
    _run(_args(qfile, img_dir, out))
    info = json.loads(Path(f"{out}.run.json").read_text())
    ckpt = fake_checkpoint(tmp_path)
    assert info["weights"] == {
        "model_path": {
            "config.json": hashlib.sha256((ckpt / "config.json").read_bytes()).hexdigest(),
            "model.safetensors": hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest(),
        }
    }
    assert info["question_file_sha256"] == hashlib.sha256(qfile.read_bytes()).hexdigest()
    assert info["schedule"]["name"] == "off" and info["max_new_tokens"] == 128 and info["do_sample"] is False
    assert info["model_path"] == str(ckpt) and info["question_file"] == str(qfile)


def test_describe_changes_of_an_old_format_run_info() -> None:
    new = {"weights": {"model_path": {"a.bin": "1"}}, "max_new_tokens": 64, "dtype": "float32"}
    assert describe_changes({"max_new_tokens": 128, "dtype": "float32"}, new) == [
        "weights not recorded by the old run",
        "max_new_tokens 128 -> 64",
    ]
    assert "unknown" in describe_changes(None, new)[0]


# ------------------------------------------------------------------------------------------ fingerprints
def test_fingerprint_cache_skips_unchanged_files_and_catches_in_place_rewrites(tmp_path, monkeypatch) -> None:
    ckpt = fake_checkpoint(tmp_path)
    cache = FingerprintCache()
    first = checkpoint_fingerprint(str(ckpt), cache=cache)
    assert Path(fingerprint.cache_path()) == tmp_path / "xdg-cache" / "hidrop-llava" / "fingerprints.json"
    assert os.path.isfile(fingerprint.cache_path())

    real_hash = fingerprint._hash_file
    hashed: list[str] = []
    monkeypatch.setattr(fingerprint, "_hash_file", lambda p, n: hashed.append(os.path.basename(p)) or real_hash(p, n))
    assert checkpoint_fingerprint(str(ckpt), cache=FingerprintCache()) == first
    assert hashed == []  # nothing re-read on an unchanged checkpoint

    # same size, mtime and inode: only ctime (part of the cache key) changed, so the file is hashed again
    rewrite_in_place(ckpt / "model.safetensors", b"FAKE weights 0123456789")
    second = checkpoint_fingerprint(str(ckpt), cache=FingerprintCache())
    assert hashed == ["model.safetensors"]
    assert second["model.safetensors"] != first["model.safetensors"]
    assert second["config.json"] == first["config.json"]


def test_fingerprint_of_a_just_written_file_is_not_cached(tmp_path, monkeypatch) -> None:
    """Within the kernel's coarse timestamp tick a second rewrite would keep the cache key: not cached yet."""
    monkeypatch.setattr(fingerprint, "RACY_WINDOW_NS", 3600 * 10**9)
    ckpt = fake_checkpoint(tmp_path)
    checkpoint_fingerprint(str(ckpt))
    assert not os.path.exists(fingerprint.cache_path())


def test_corrupt_fingerprint_cache_is_ignored_and_rebuilt(tmp_path, caplog) -> None:
    ckpt = fake_checkpoint(tmp_path)
    expected = checkpoint_fingerprint(str(ckpt))
    Path(fingerprint.cache_path()).write_text('{"version": 1, "files": {')
    with caplog.at_level(logging.WARNING):
        assert checkpoint_fingerprint(str(ckpt)) == expected
    assert "unreadable" in caplog.text
    assert json.loads(Path(fingerprint.cache_path()).read_text())["version"] == fingerprint.CACHE_VERSION


def test_weight_files_cover_every_checkpoint_kind_and_skip_subfolders(tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoint-100").mkdir(parents=True)
    for name in (
        "config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "mm_projector.bin",
        "adapter_model.safetensors", "adapter_config.json", "non_lora_trainables.bin", "tokenizer.model",
        "trainer_state.json", "README.md", "checkpoint-100/optimizer.bin",
    ):
        (ckpt / name).write_text(name)
    assert weight_files(str(ckpt)) == [
        "adapter_config.json", "adapter_model.safetensors", "config.json", "mm_projector.bin",
        "model-00001-of-00002.safetensors", "model.safetensors.index.json", "non_lora_trainables.bin",
        "tokenizer.model",
    ]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(EvalDataError, match="holds no weight files"):
        weight_files(str(tmp_path / "empty"))


def test_missing_model_path_is_an_error(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    with pytest.raises(EvalDataError, match="nope"):
        run_benchmark.run(_args(qfile, img_dir, tmp_path / "a.jsonl", model_path=str(tmp_path / "nope")), load=_no_load)


# ------------------------------------------------------------------------------------------ item 2: merge
def test_merge_rejects_answers_to_an_edited_question(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    _run(_args(qfile, img_dir, tmp_path / "1_0.jsonl"))
    _change_question(tmp_path, qfile, {})  # question 102 now reads "what shape?"
    argv = ["--bench", "gqa", "--question-file", str(qfile), "--chunks-dir", str(tmp_path), "--num-chunks", "1", "--output", str(tmp_path / "m.jsonl")]
    with pytest.raises(EvalDataError, match=r"question '102'.*rerun the benchmark script"):
        merge.main(argv)
    # the benchmark script's rerun answers again, after which the merge succeeds
    assert _run(_args(qfile, img_dir, tmp_path / "1_0.jsonl")) == NUM_QUESTIONS
    merge.main(argv)
    assert len(_texts(tmp_path / "m.jsonl")) == NUM_QUESTIONS


# ------------------------------------------------------------------------------------------ item 10: last line
def _reference(qfile, img_dir, tmp_path) -> list[tuple]:
    ref = tmp_path / "ref.jsonl"
    _run(_args(qfile, img_dir, ref))
    return _texts(ref)


def test_resume_adds_the_missing_newline_of_a_complete_last_line(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    ref = _reference(qfile, img_dir, tmp_path)
    out = tmp_path / "run.jsonl"
    _run(_args(qfile, img_dir, out))
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:4]))  # four complete answers, the fourth without its newline
    assert _run(_args(qfile, img_dir, out)) == 3
    assert out.read_text().count("\n") == NUM_QUESTIONS and out.read_text().endswith("\n")
    assert _texts(out) == ref


@pytest.mark.parametrize("tail", [b'{"question_id": "104", "te', b'{"question_id": "104", "text": "\xc3'], ids=["json", "utf8"])
def test_resume_drops_a_truncated_last_line(tail, gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    ref = _reference(qfile, img_dir, tmp_path)
    out = tmp_path / "run.jsonl"
    _run(_args(qfile, img_dir, out))
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:4]) + tail)  # killed in the middle of line 5 (or of a multi-byte character)
    assert _run(_args(qfile, img_dir, out)) == 3
    assert _texts(out) == ref


# ------------------------------------------------------------------------------------------ item 11: lock
def test_a_second_run_on_the_same_answers_file_fails_at_once(gqa_data, tmp_path) -> None:
    """While one run is generating, a second process on the same answers file stops before doing anything."""
    qfile, img_dir = gqa_data
    out = tmp_path / "a.jsonl"
    args = _args(qfile, img_dir, out, batch=4)
    argv = [
        "--bench", "gqa", "--model-path", str(args.model_path), "--question-file", str(qfile),
        "--image-folder", str(img_dir), "--answers-file", str(out), "--device", "cpu",
    ]
    second: list[subprocess.CompletedProcess] = []

    def load(_args, _overrides):
        from test_eval_runner import fake_backend

        backend, model = fake_backend()
        real = backend.generate

        def generate(*a, **k):
            if not second:  # the first batch is being generated: the file is locked by this process
                env = {**os.environ, "PYTHONPATH": str(REPO)}
                second.append(
                    subprocess.run(
                        [sys.executable, "-m", "llava.eval.run_benchmark", *argv],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                    )
                )
            return real(*a, **k)

        backend.generate = generate
        backend.generate_with_stats = lambda *a, **k: (generate(*a, **k), None)
        return backend, model

    assert run_benchmark.run(args, load=load) == NUM_QUESTIONS
    proc = second[0]
    assert proc.returncode != 0
    assert f"answers file {out} is being written by another evaluation run (pid {os.getpid()} on" in proc.stderr
    assert len(out.read_text().splitlines()) == NUM_QUESTIONS  # nothing appended twice
    # the lock went with the first run: a rerun proceeds (and has nothing to do)
    assert run_benchmark.run(args, load=_no_load) == 0


# ------------------------------------------------------------------------------------------ item 12: bad lines
@pytest.mark.parametrize(
    "bad, problem",
    [
        (b"{oops", "is malformed JSON"),
        (b"null", "holds a JSON null, not an answer object"),
        (b"[1, 2]", "holds a JSON array, not an answer object"),
        (b'{"text": "yes"}', "is an object without a question_id"),
        (b'{"question_id": "\xff"}', "is not valid UTF-8"),
    ],
    ids=["malformed", "null", "array", "no-question-id", "not-utf8"],
)
def test_a_bad_middle_line_says_which_line_to_delete(bad, problem, gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    ref = _reference(qfile, img_dir, tmp_path)
    out = tmp_path / "run.jsonl"
    _run(_args(qfile, img_dir, out))
    lines = out.read_bytes().splitlines(keepends=True)
    lines[2] = bad + b"\n"
    out.write_bytes(b"".join(lines))
    with pytest.raises(EvalDataError, match=rf"answers file {out}, line 3 {problem}.*Delete line 3 \(its question will be answered again on the next run\) or delete the file"):
        run_benchmark.run(_args(qfile, img_dir, out), load=_no_load)
    # following the advice works
    del lines[2]
    out.write_bytes(b"".join(lines))
    assert _run(_args(qfile, img_dir, out)) == 1
    assert sorted(_texts(out)) == sorted(ref)


def test_a_duplicate_answer_says_which_line_to_delete(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    out = tmp_path / "run.jsonl"
    _run(_args(qfile, img_dir, out))
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join([*lines, lines[1]]))
    with pytest.raises(EvalDataError, match=r"line 8: a second answer for question '101' \(the first is on line 2\)\. Delete line 8"):
        run_benchmark.run(_args(qfile, img_dir, out), load=_no_load)


@pytest.mark.parametrize("bad", ["null", "{oops", '{"text": "yes"}'])
def test_merge_names_a_bad_line_and_the_fix(bad, gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    chunk = tmp_path / "1_0.jsonl"
    _run(_args(qfile, img_dir, chunk))
    lines = chunk.read_text().splitlines(keepends=True)
    lines[4] = bad + "\n"
    chunk.write_text("".join(lines))
    with pytest.raises(EvalDataError, match=rf"answers file {chunk}, line 5: .*delete that line .*rerun the benchmark script"):
        merge.main(["--bench", "gqa", "--question-file", str(qfile), "--inputs", str(chunk), "--output", str(tmp_path / "m.jsonl")])


# ------------------------------------------------------------------------------------------ item 13: nothing to score
def test_empty_question_file_is_refused(tmp_path) -> None:
    qfile = tmp_path / "empty.jsonl"
    qfile.write_text("\n")
    with pytest.raises(EvalDataError, match=rf"question file {qfile} holds no questions"):
        run_benchmark.run(_args(qfile, tmp_path, tmp_path / "a.jsonl"), load=_no_load)
    assert not (tmp_path / "a.jsonl").exists()


GQA_FIX = REPO / "tests" / "fixtures" / "eval" / "gqa"


def _score_gqa(tmp_path: Path, annotations: str) -> Path:
    ann = tmp_path / "testdev_balanced_questions.json"
    ann.write_text(annotations)
    result = tmp_path / "res" / "gqa.json"
    score.main([
        "--bench", "gqa", "--answers-file", str(GQA_FIX / "answers.jsonl"), "--annotation-file", str(ann),
        "--result-file", str(result),
    ])
    return result


def test_gqa_with_empty_annotations_is_an_error_not_zero(tmp_path, capsys) -> None:
    with pytest.raises(EvalDataError, match="holds no questions"):
        _score_gqa(tmp_path, "{}")
    assert "GQA accuracy" not in capsys.readouterr().out
    assert not (tmp_path / "res" / "gqa.json").exists()


def test_gqa_with_annotations_of_other_questions_is_an_error(tmp_path) -> None:
    with pytest.raises(EvalDataError, match="missing predictions.*same split"):
        _score_gqa(tmp_path, json.dumps({"999": {"answer": "yes"}}))
    assert not (tmp_path / "res" / "gqa.json").exists()


def test_nothing_scored_is_an_error_generic_guard(tmp_path) -> None:
    """Annotations exist but none of them counts (no balanced question): the scorer returns 0 of 0, and
    score.py refuses to turn that into a result."""
    questions = {qid: {"answer": "yes", "isBalanced": False} for qid in ("201", "202", "203", "204", "205", "206")}
    with pytest.raises(EvalDataError, match="none of the 6 answer\\(s\\) .* could be scored"):
        _score_gqa(tmp_path, json.dumps(questions))
    assert not (tmp_path / "res" / "gqa.json").exists()


def _empty_ground_truth(bench: str, root: Path) -> list[str]:
    """Each benchmark's ground-truth arguments, pointing at files that exist but hold nothing."""

    def write(name: str, text: str) -> str:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    header = "index\tquestion\tA\tB\tanswer\tcategory\n"
    if bench == "pope":
        write("pope/coco_pope_random.json", "")
        return ["--annotation-dir", str(root / "pope")]
    if bench == "mme":
        (root / "mme").mkdir()
        return ["--annotation-dir", str(root / "mme")]
    if bench == "sqa":
        write("sqa/problems.json", "{}")
        write("sqa/pid_splits.json", '{"test": []}')
        return ["--annotation-dir", str(root / "sqa")]
    if bench in ("mmbench", "mmbench_cn"):
        return ["--question-file", write(f"{bench}.tsv", header)]
    if bench == "mmstar":
        return ["--question-file", write("mmstar.jsonl", "")]
    annotation = {"gqa": "{}", "vqav2": '{"annotations": []}', "vizwiz": "[]", "textvqa": '{"data": []}', "seed": '{"questions": []}'}
    return ["--annotation-file", write(f"{bench}.json", annotation[bench])]


@pytest.mark.parametrize("bench", sorted(run_benchmark.BENCHMARK_NAMES))
def test_every_benchmark_refuses_to_score_nothing(bench, tmp_path, capsys) -> None:
    """Empty answers against empty ground truth: a named error for every scorer, never a traceback or 0.00."""
    answers = tmp_path / "merge.jsonl"
    answers.write_text("")
    result = tmp_path / "res.json"
    with pytest.raises(EvalDataError):
        score.main(["--bench", bench, "--answers-file", str(answers), *_empty_ground_truth(bench, tmp_path), "--result-file", str(result)])
    assert not result.exists()
    assert ": 0.00" not in capsys.readouterr().out
