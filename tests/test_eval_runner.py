"""The inference runner on a fake model that honours the generate contract.

The fake's answer is a hash of the *unpadded* prompt ids and of the image pixels, and it checks left padding,
so batching bugs (wrong padding side, mask ignored, images shuffled across rows) change the answers.
"""

from __future__ import annotations

import json
import os
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.eval import merge, run_benchmark
from llava.eval.files import EvalDataError
from llava.eval.run_benchmark import LlavaBackend, build_parser, chunk_bounds

PAD, EOS = 0, 2


class FakeTokenizer:
    pad_token_id = PAD
    eos_token_id = EOS

    def batch_decode(self, ids: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        out = []
        for row in ids.tolist():
            out.append("".join(chr(ord("a") + t - 3) for t in row if t not in (PAD, EOS)) + " ")
        return out


def fake_tokenize(prompt: str) -> torch.Tensor:
    """One id per character, the <image> tag as IMAGE_TOKEN_INDEX; BOS first."""
    ids = [1]
    for i, part in enumerate(prompt.split("<image>")):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(3 + ord(c) % 23 for c in part)
    return torch.tensor(ids, dtype=torch.long)


def fake_preprocess(images: list[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(img.resize((2, 2)), dtype=np.float32).transpose(2, 0, 1) / 255 for img in images]
    return torch.from_numpy(np.stack(arrays))


def fake_template(text: str, has_image: bool) -> str:
    return f"USER: {'<image>' if has_image else ''}\n{text} ASSISTANT:"


class FakeModel(torch.nn.Module):
    """Deterministic generate(): answers depend only on each row's real tokens and image."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0
        self.batch_sizes: list[int] = []

    def generate(self, input_ids, attention_mask, images, max_new_tokens, do_sample):
        assert do_sample is False
        self.calls += 1
        self.batch_sizes.append(input_ids.shape[0])
        rows = []
        for ids, mask, img in zip(input_ids, attention_mask, images):
            m = mask.tolist()
            assert m == sorted(m), "prompts must be left-padded"
            assert all(t == PAD for t, k in zip(ids.tolist(), m) if not k)
            real = ids[mask.bool()].tolist()
            has_image = IMAGE_TOKEN_INDEX in real
            if not has_image:
                assert float(img.abs().sum()) == 0.0, "text-only samples get a zero image"
            h = sum((i + 1) * t for i, t in enumerate(real)) + int(round(float(img.sum()) * 1000))
            n = 1 + h % 4
            rows.append([3 + (h >> k) % 20 for k in range(n)][:max_new_tokens] + [EOS])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long)


def fake_backend() -> tuple[LlavaBackend, FakeModel]:
    model = FakeModel()
    backend = LlavaBackend(model, FakeTokenizer(), None, template=fake_template, tokenize=fake_tokenize, preprocess=fake_preprocess)
    return backend, model


@pytest.fixture(autouse=True)
def _fingerprint_cache(tmp_path, monkeypatch):
    """Keeps the runner's weights-fingerprint cache out of the real ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def fake_checkpoint(root: Path, name: str = "fake-ckpt") -> Path:
    """A checkpoint folder with just enough files to be fingerprinted (the fake backend loads nothing)."""
    ckpt = root / name
    if not ckpt.is_dir():
        ckpt.mkdir(parents=True)
        (ckpt / "config.json").write_text("{}\n")
        (ckpt / "model.safetensors").write_bytes(b"fake weights 0123456789")
    return ckpt


@pytest.fixture()
def gqa_data(tmp_path):
    return make_gqa_data(tmp_path)


def make_gqa_data(tmp_path: Path) -> tuple[Path, Path]:
    """Seven GQA-style questions over three small images."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (6, 4), color).save(img_dir / f"n{i}.png")
    qfile = tmp_path / "questions.jsonl"
    words = ["red", "green", "is it", "what color", "how many", "where", "why not"]
    with open(qfile, "w") as f:
        for i, w in enumerate(words):
            f.write(json.dumps({"question_id": str(100 + i), "image": f"n{i % 3}.png", "text": f"{w}?" * (i + 1)}) + "\n")
    return qfile, img_dir


def _args(qfile, img_dir, answers, chunks=1, idx=0, batch=1, **kw) -> Namespace:
    """Runner arguments; the model path defaults to a fake checkpoint next to the question file."""
    model_path = kw.pop("model_path", None) or fake_checkpoint(Path(qfile).parent)
    argv = [
        "--bench", kw.pop("bench", "gqa"), "--model-path", str(model_path), "--question-file", str(qfile),
        "--image-folder", str(img_dir), "--answers-file", str(answers), "--num-chunks", str(chunks),
        "--chunk-idx", str(idx), "--batch-size", str(batch),
    ]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return build_parser().parse_args(argv)


def _run(args, holder: list | None = None) -> int:
    def load(_args, _overrides):
        backend, model = fake_backend()
        if holder is not None:
            holder.append(model)
        return backend, model

    return run_benchmark.run(args, load=load)


def _texts(path) -> list[tuple]:
    return [(r["question_id"], r["text"]) for r in map(json.loads, open(path))]


def test_chunk_bounds() -> None:
    # ceil(10/3) = 4 per chunk: [0,4) [4,8) [8,10)
    assert [chunk_bounds(10, 3, i) for i in range(3)] == [(0, 4), (4, 8), (8, 10)]
    # more chunks than questions: trailing chunks are empty instead of an IndexError
    assert [chunk_bounds(2, 4, i) for i in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    with pytest.raises(ValueError):
        chunk_bounds(5, 2, 2)


def test_chunks_plus_merge_equal_one_chunk(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    single = tmp_path / "one" / "1_0.jsonl"
    _run(_args(qfile, img_dir, single))
    merge.main(["--bench", "gqa", "--question-file", str(qfile), "--chunks-dir", str(single.parent), "--num-chunks", "1", "--output", str(tmp_path / "one" / "merge.jsonl")])
    for i in range(3):
        _run(_args(qfile, img_dir, tmp_path / "three" / f"3_{i}.jsonl", chunks=3, idx=i))
    merge.main(["--bench", "gqa", "--question-file", str(qfile), "--chunks-dir", str(tmp_path / "three"), "--num-chunks", "3", "--output", str(tmp_path / "three" / "merge.jsonl")])
    one, three = _texts(tmp_path / "one" / "merge.jsonl"), _texts(tmp_path / "three" / "merge.jsonl")
    assert one == three
    assert [q for q, _ in one] == [str(100 + i) for i in range(7)]  # question order restored
    assert all(t and t == t.strip() for _, t in one)  # decoded text is stripped
    info = json.load(open(tmp_path / "three" / "merge.jsonl.run.json"))
    assert info["bench"] == "gqa" and info["model_id"] == "fake-ckpt"


def test_batched_equals_batch_one(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    _run(_args(qfile, img_dir, tmp_path / "b1.jsonl", batch=1))
    models: list = []
    _run(_args(qfile, img_dir, tmp_path / "b4.jsonl", batch=4), models)
    assert models[0].batch_sizes == [4, 3]  # prompts of different lengths shared a batch
    assert _texts(tmp_path / "b1.jsonl") == _texts(tmp_path / "b4.jsonl")


def test_batched_text_only_mix_equals_batch_one(tmp_path) -> None:
    """ScienceQA mixes image and text-only questions in one batch (zero image, no placeholder)."""
    img_dir = tmp_path / "img"
    (img_dir / "p1").mkdir(parents=True)
    Image.new("RGB", (5, 5), (9, 99, 199)).save(img_dir / "p1" / "image.png")
    items = [
        {"id": "p1", "image": "p1/image.png", "conversations": [{"from": "human", "value": "<image>\nWhich? A. x B. y"}]},
        {"id": "p2", "conversations": [{"from": "human", "value": "Pick one.\nA. a\nB. b"}]},
        {"id": "p3", "conversations": [{"from": "human", "value": "Longer text-only question here.\nA. a\nB. b"}]},
    ]
    qfile = tmp_path / "sqa.json"
    qfile.write_text(json.dumps(items))
    _run(_args(qfile, img_dir, tmp_path / "b1.jsonl", bench="sqa"))
    _run(_args(qfile, img_dir, tmp_path / "b3.jsonl", bench="sqa", batch=3))
    assert _texts(tmp_path / "b1.jsonl") == _texts(tmp_path / "b3.jsonl")


def test_resume_after_interruption(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    ref = tmp_path / "ref.jsonl"
    _run(_args(qfile, img_dir, ref, batch=2))
    out = tmp_path / "run.jsonl"

    class Interrupted(Exception):
        pass

    def crashing_load(_args, _overrides):
        backend, model = fake_backend()
        real = backend.generate

        def generate(*a, **k):
            if model.calls >= 2:
                raise Interrupted
            return real(*a, **k)

        backend.generate = generate
        backend.generate_with_stats = lambda *a, **k: (generate(*a, **k), None)  # what the runner calls
        return backend, model

    with pytest.raises(Interrupted):
        run_benchmark.run(_args(qfile, img_dir, out, batch=2), load=crashing_load)
    assert len(_texts(out)) == 4  # two batches of 2 were flushed before the crash
    with open(out, "a") as f:
        f.write('{"question_id": "104", "te')  # a line cut short by a kill
    models: list = []
    assert _run(_args(qfile, img_dir, out, batch=2), models) == 3  # only the 3 missing questions
    assert models[0].batch_sizes == [2, 1]
    assert _texts(out) == _texts(ref)
    # a finished chunk reruns without loading the model
    assert run_benchmark.run(_args(qfile, img_dir, out), load=lambda *_: pytest.fail("model loaded")) == 0


def test_resume_with_different_settings_restarts_or_stops(gqa_data, tmp_path, caplog) -> None:
    """Answers of another schedule are never reused: --on-mismatch error stops and touches nothing; the
    default (restart) moves them aside, keeps them, and answers everything again."""
    qfile, img_dir = gqa_data
    out = tmp_path / "a.jsonl"
    _run(_args(qfile, img_dir, out))
    old_answers, old_run_id = out.read_text(), json.loads(open(f"{out}.run.json").read())["run_id"]
    with pytest.raises(EvalDataError, match=r"another run .*schedule changed \(exit_layer -1 -> 24, .*--on-mismatch restart"):
        _run(_args(qfile, img_dir, out, reduction_override="exit_layer=24", on_mismatch="error"))
    assert out.read_text() == old_answers and not list(tmp_path.glob("a.jsonl.stale-*"))
    assert _run(_args(qfile, img_dir, out, reduction_override="exit_layer=24")) == 7
    stale = tmp_path / f"a.jsonl.stale-{old_run_id}"
    assert stale.read_text() == old_answers
    assert json.loads((tmp_path / f"a.jsonl.stale-{old_run_id}.run.json").read_text())["run_id"] == old_run_id
    assert "schedule changed (exit_layer -1 -> 24, " in caplog.text and str(stale) in caplog.text
    new_run_id = json.loads(open(f"{out}.run.json").read())["run_id"]
    assert new_run_id != old_run_id and {json.loads(line)["run_id"] for line in open(out)} == {new_run_id}
    with pytest.raises(EvalDataError, match="not in this chunk"):
        _run(_args(qfile, img_dir, out, chunks=2, idx=1, reduction_override="exit_layer=24"))


def test_duplicate_question_id_is_an_error(tmp_path, gqa_data) -> None:
    qfile, img_dir = gqa_data
    dup = tmp_path / "dup.jsonl"
    lines = open(qfile).read().splitlines()
    dup.write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.raises(EvalDataError, match="duplicate question id '100'"):
        _run(_args(dup, img_dir, tmp_path / "x.jsonl"))


def test_merge_fails_on_duplicate_and_missing(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    for i in range(2):
        _run(_args(qfile, img_dir, tmp_path / f"2_{i}.jsonl", chunks=2, idx=i))
    base = ["--bench", "gqa", "--question-file", str(qfile), "--output", str(tmp_path / "m.jsonl")]
    c0, c1 = tmp_path / "2_0.jsonl", tmp_path / "2_1.jsonl"
    # the same chunk twice: every id is duplicated
    with pytest.raises(EvalDataError, match="duplicate answer for question '100'"):
        merge.main([*base, "--inputs", str(c0), str(c0)])
    # one chunk only: the other chunk's ids are missing
    with pytest.raises(EvalDataError, match="3 of 7 questions have no answer"):
        merge.main([*base, "--inputs", str(c0)])
    # a chunk file that is not there (its process crashed)
    with pytest.raises(EvalDataError, match="chunk file missing"):
        merge.main([*base, "--chunks-dir", str(tmp_path), "--num-chunks", "3"])
    merge.main([*base, "--inputs", str(c0), str(c1)])
    assert len(_texts(tmp_path / "m.jsonl")) == 7


def test_missing_image_names_the_file(gqa_data, tmp_path) -> None:
    qfile, img_dir = gqa_data
    os.remove(img_dir / "n1.png")
    with pytest.raises(Exception, match="n1.png"):
        _run(_args(qfile, img_dir, tmp_path / "x.jsonl"))


def test_unknown_benchmark_and_missing_question_file(tmp_path) -> None:
    from llava.eval.benchmarks import get_benchmark

    with pytest.raises(EvalDataError, match="unknown benchmark 'gqa2'"):
        get_benchmark("gqa2")
    with pytest.raises(EvalDataError, match="not found"):
        get_benchmark("gqa").load_questions(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "text": "a"}\n{oops\n')
    with pytest.raises(EvalDataError, match="line 2"):
        get_benchmark("pope").load_questions(str(bad))
