"""The lmms-eval plugin (``--model hidrop_llava``) on a tiny local checkpoint and local tasks, all offline.

The checkpoint (tiny Llama + tiny CLIP, random weights, saved with the ``off`` schedule) and two tasks are built
in a temporary folder: a generation task (three digit images and one text-only question, exact-match metric)
and a multiple-choice task (loglikelihood requests, ``acc``). The tasks read a ``datasets`` folder written with
``save_to_disk`` (``dataset_kwargs: {load_from_disk: true}``), so no hub is involved. Every model run uses the
small pruning schedule below, passed through ``--model_args``, so the vision tokens really are pruned.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (the project's `lmms` extra)")

import torch  # noqa: E402
from train_fixtures import REPO, TINY_SCHEDULE, build_tiny_assets  # noqa: E402

from llava.eval.run_benchmark import LlavaBackend  # noqa: E402

# lmms-eval splits --model_args on commas outside brackets: list values go in brackets.
OVERRIDES = "inject_layer=2 prune_layers=[2,3] keep_counts=[8,4] exit_layer=4"
MAX_NEW_TOKENS = 5
GEN_QUESTIONS = ["What digit is this?", "Is it even?", "What digit is this?", "What comes after three?"]
MC_CHOICES = ["zero", "one", "two", "three"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Checkpoint, datasets and task YAMLs in one temporary folder."""
    from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
    from PIL import Image as PILImage
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava.model import LlavaConfig, LlavaLlamaForCausalLM

    root = tmp_path_factory.mktemp("lmms")
    assets = build_tiny_assets(root / "assets", num_samples=8)
    model = LlavaLlamaForCausalLM.from_pretrained(assets["llm"], config=LlavaConfig.from_pretrained(assets["llm"]))
    model.initialize_vision_modules(assets["clip"])
    torch.manual_seed(0)
    torch.nn.init.normal_(model.model.mm_projector[0].weight, std=0.5)  # make the image matter to the answers
    # Zero logits for special and byte-fallback tokens, so that the random model's greedy picks are word pieces
    # whose text tokenizes back to them (a loglikelihood request carries text, not token ids).
    tok = AutoTokenizer.from_pretrained(assets["llm"])
    odd = [
        i
        for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok)))))
        if i in tok.all_special_ids or t.startswith("<0x")
    ]
    with torch.no_grad():
        model.lm_head.weight[odd] = 0
    ckpt = root / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    CLIPImageProcessor.from_pretrained(assets["clip"]).save_pretrained(ckpt)

    images = [PILImage.open(Path(assets["images"]) / f"{i:04d}.png").convert("RGB") for i in range(4)]
    gen = Dataset.from_dict(
        {
            "question_id": [f"g{i}" for i in range(4)],
            "question": GEN_QUESTIONS,
            "image": [images[0], images[1], images[2], None],  # the last question is text-only
            "answer": ["zero", "no", "two", "four"],
        },
        features=Features(
            {"question_id": Value("string"), "question": Value("string"), "image": Image(), "answer": Value("string")}
        ),
    )
    mc = Dataset.from_dict(
        {
            "question_id": [f"m{i}" for i in range(3)],
            "question": ["Which digit is shown?"] * 3,
            "image": images[:3],
            "choices": [MC_CHOICES] * 3,
            "label": [0, 1, 2],
        },
        features=Features(
            {
                "question_id": Value("string"),
                "question": Value("string"),
                "image": Image(),
                "choices": Sequence(Value("string")),
                "label": Value("int64"),
            }
        ),
    )
    DatasetDict({"test": gen}).save_to_disk(str(root / "data" / "gen"))
    DatasetDict({"test": mc}).save_to_disk(str(root / "data" / "mc"))

    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "hidrop_tiny_gen.yaml").write_text(
        textwrap.dedent(f"""\
        task: hidrop_tiny_gen
        dataset_path: {root / "data" / "gen"}
        dataset_kwargs:
          load_from_disk: true
        test_split: test
        output_type: generate_until
        doc_to_visual: image
        doc_to_text: "{{{{question}}}}"
        doc_to_target: answer
        generation_kwargs:
          until: ["ASSISTANT:"]
          max_new_tokens: {MAX_NEW_TOKENS}
          temperature: 0
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        """)
    )
    (tasks / "hidrop_tiny_mc.yaml").write_text(
        textwrap.dedent(f"""\
        task: hidrop_tiny_mc
        dataset_path: {root / "data" / "mc"}
        dataset_kwargs:
          load_from_disk: true
        test_split: test
        output_type: multiple_choice
        doc_to_visual: image
        doc_to_text: "{{{{question}}}}"
        doc_to_choice: choices
        doc_to_target: label
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        """)
    )
    return {"root": root, "ckpt": str(ckpt), "tasks": str(tasks), "images": images}


@pytest.fixture(scope="module")
def lm(world):
    """The plugin model, loaded as lmms-eval loads it (from --model_args)."""
    from llava.eval.lmms_plugin import HiDropLlava

    return HiDropLlava.create_from_arg_string(
        f"pretrained={world['ckpt']},reduction=off,reduction_overrides={OVERRIDES}",
        {"batch_size": 3, "device": "cpu"},
    )


@pytest.fixture(scope="module")
def reference(world):
    """Our own runner's backend on the same checkpoint and schedule, loaded without the plugin."""
    from llava.model.builder import load_pretrained_model
    from llava.model.reduction.config import parse_overrides

    tok, model, proc, _ = load_pretrained_model(
        world["ckpt"], reduction="off", reduction_overrides=parse_overrides(TINY_SCHEDULE)
    )
    return LlavaBackend(model, tok, proc)


def _instances(kind: str, args_list: list[tuple]) -> list:
    from lmms_eval.api.instance import Instance

    return [
        Instance(request_type=kind, arguments=a, idx=0, metadata={"task": "t", "doc_id": i, "repeats": 1})
        for i, a in enumerate(args_list)
    ]


def _docs(lm, images) -> None:
    """Registers ``images`` as task ``t``'s documents, as the evaluator does before sending requests."""
    lm.task_dict = {"t": {"test": [{"image": img} for img in images]}}


def _visual(doc):
    return [doc["image"]] if doc["image"] is not None else []


# ------------------------------------------------------------------------------------------------ end to end
def _plugin_env(tmp_path: Path) -> dict[str, str]:
    """Offline environment for the CLI. Until the package is reinstalled with the entry point from pyproject.toml,
    an equivalent dist-info on PYTHONPATH declares it: the same mechanism lmms-eval reads for installed plugins."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), OMP_NUM_THREADS="1"
    )
    env.pop("LMMS_EVAL_PLUGINS", None)
    paths = [str(REPO)]
    if "hidrop_llava" not in {ep.name for ep in entry_points(group="lmms_eval.models")}:
        info = tmp_path / "ep" / "hidrop_llava_plugin_test-0.0.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hidrop-llava-plugin-test\nVersion: 0.0.0\n")
        (info / "entry_points.txt").write_text(
            "[lmms_eval.models]\nhidrop_llava = llava.eval.lmms_plugin:lmms_eval_models\n"
        )
        paths.insert(0, str(tmp_path / "ep"))
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_cli_evaluates_local_tasks_like_our_runner(world, reference, lm, tmp_path):
    """``python -m lmms_eval --model hidrop_llava`` runs both tasks; answers equal LlavaBackend's, metrics agree."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "lmms_eval",
        "--model", "hidrop_llava",
        "--model_args", f"pretrained={world['ckpt']},reduction=off,reduction_overrides={OVERRIDES}",
        "--tasks", "hidrop_tiny_gen,hidrop_tiny_mc",
        "--include_path", world["tasks"],
        "--batch_size", "2", "--device", "cpu",
        "--output_path", str(out), "--log_samples", "--verbosity", "WARNING",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=_plugin_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results_files = list(out.rglob("*_results.json"))
    assert len(results_files) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(results_files[0].read_text())["results"]

    # generate_until: each answer equals our runner's at batch size 1 (then cut at the task's stop string)
    samples = {}
    for line in next(out.rglob("*_samples_hidrop_tiny_gen.jsonl")).read_text().splitlines():
        s = json.loads(line)
        samples[s["doc_id"]] = s
    images = [*world["images"][:3], None]
    expected = [
        reference.generate([q], [img], MAX_NEW_TOKENS)[0].split("ASSISTANT:")[0]
        for q, img in zip(GEN_QUESTIONS, images)
    ]
    got = [samples[i]["filtered_resps"][0] for i in range(4)]
    assert got == expected
    assert any(got), "the tiny model answered nothing at all; the comparison would be vacuous"
    answers = ["zero", "no", "two", "four"]
    assert results["hidrop_tiny_gen"]["exact_match,none"] == pytest.approx(
        sum(g == a for g, a in zip(got, answers)) / 4
    )

    # multiple choice: lmms-eval picks the most likely choice (it takes the argmin of our negative log-likelihoods)
    _docs(lm, world["images"][:3])
    reqs = _instances(
        "loglikelihood",
        [("Which digit is shown?", f" {c}", _visual, d, "t", "test") for d in range(3) for c in MC_CHOICES],
    )
    logprobs = [lp for lp, _ in lm.continuation_logprobs(reqs)]
    picks = [max(range(4), key=lambda c: logprobs[4 * d + c]) for d in range(3)]
    assert results["hidrop_tiny_mc"]["acc,none"] == pytest.approx(sum(p == d for d, p in enumerate(picks)) / 3)
    for line in next(out.rglob("*_samples_hidrop_tiny_mc.jsonl")).read_text().splitlines():
        s = json.loads(line)
        logged = [float(r[0]) for r in s["filtered_resps"]]
        assert logged == pytest.approx([-lp for lp in logprobs[4 * s["doc_id"] : 4 * s["doc_id"] + 4]], abs=1e-4)


# ------------------------------------------------------------------------------------------------ loglikelihood
def _generation_scores(reference, text, image, tokens, monkeypatch) -> tuple[float, bool]:
    """Log-probability and greedy flag of ``tokens`` as the model's own cached generation loop sees them: generate
    is forced to emit ``tokens`` (its token picker is replaced) and lm_head's outputs are captured at every step."""
    import llava.model.llava_llama as llava_llama

    model, forced, captured = reference.model, iter(tokens), []
    monkeypatch.setattr(llava_llama, "next_token", lambda logits, *a: torch.tensor([next(forced)]))
    hook = model.lm_head.register_forward_hook(
        lambda mod, inp, out: captured.append(out.detach().float().reshape(-1, out.shape[-1])[-1])
    )
    try:
        ids = reference.tokenize(reference.template(text, image is not None)).view(1, -1)
        pixels = reference.preprocess([image]) if image is not None else None
        with torch.inference_mode():
            model.generate(input_ids=ids, images=pixels, max_new_tokens=len(tokens), do_sample=False, eos_token_id=-1)
    finally:
        hook.remove()
        monkeypatch.undo()
    steps = torch.stack([torch.log_softmax(c, -1) for c in captured[: len(tokens)]])
    target = torch.tensor(tokens)
    return float(steps.gather(1, target.unsqueeze(1)).sum()), bool((steps.argmax(-1) == target).all())


def test_loglikelihood_equals_the_probability_generation_gives(world, lm, reference, monkeypatch):
    """Under the pruning schedule, a continuation's score is the sum of the log-probabilities that the cached
    generation loop computes for its tokens, and the greedy flag is what that loop would pick."""
    tok, images = reference.tokenizer, world["images"]
    cases = []  # (doc id, question, image, continuation text, its tokens)
    for d, (q, img) in enumerate(zip(GEN_QUESTIONS, [*images[:3], None])):
        prompt = reference.template(q, img is not None)
        n_prompt = len(reference.tokenize(prompt))
        for cont in (" two three", " no"):
            cases.append((d, q, img, cont, reference.tokenize(prompt + cont).tolist()[n_prompt:]))
    # the model's own greedy first token, where its text tokenizes back to it (random weights may pick a byte)
    greedy_cases = []
    for d, (q, img) in enumerate(zip(GEN_QUESTIONS, [*images[:3], None])):
        ids = reference.tokenize(reference.template(q, img is not None)).view(1, -1)
        with torch.inference_mode():
            new = reference.model.generate(
                input_ids=ids, images=reference.preprocess([img]) if img is not None else None, max_new_tokens=1
            )[0]
        text = tok.decode(new)
        prompt = reference.template(q, img is not None)
        if reference.tokenize(prompt + text).tolist()[len(reference.tokenize(prompt)) :] == new.tolist():
            greedy_cases.append((d, q, img, text, new.tolist()))
    assert greedy_cases, "no greedy token of the tiny model round-trips through its text"
    cases += greedy_cases

    _docs(lm, [*images[:3], None])
    expected = [_generation_scores(reference, q, img, toks, monkeypatch) for _, q, img, _, toks in cases]
    assert any(g for _, g in expected) and not all(g for _, g in expected)
    reqs = _instances("loglikelihood", [(q, cont, _visual, d, "t", "test") for d, q, _, cont, _ in cases])
    for batch_size in (1, 3):  # batched (left-padded) scoring gives the same numbers
        lm.batch_size_per_device = batch_size
        got = lm.continuation_logprobs(reqs)
        assert [g for _, g in got] == [g for _, g in expected]
        assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in expected], abs=1e-4)
    lm.batch_size_per_device = 3
    # what lmms-eval receives: the negative log-likelihood (its multiple-choice scorer takes the argmin)
    assert lm.loglikelihood(reqs) == [(-lp, g) for lp, g in got]


def test_loglikelihood_of_text_only_and_empty_contexts(world, lm):
    """A text-only document and the two-element requests of acc_mutual_info (empty context, no image) are scored."""
    _docs(lm, [world["images"][0], None])
    reqs = [
        ("Which digit is shown?", " zero", _visual, 0, "t", "test"),
        ("Which digit is shown?", " zero", _visual, 1, "t", "test"),  # the same question without its image
        ("", "zero"),
        ("Which digit is shown?", "", _visual, 0, "t", "test"),  # an empty continuation has probability 1
    ]
    out = lm.continuation_logprobs(_instances("loglikelihood", reqs))
    assert all(lp < 0 and lp == lp for lp, _ in out[:3])
    assert out[1][0] != pytest.approx(out[0][0])  # the image changes the score
    assert out[3] == (0.0, True)


# ------------------------------------------------------------------------------------------------ generate_until
def test_generate_until_cuts_at_stop_strings_and_batches_like_batch_size_one(world, lm, reference):
    _docs(lm, [*world["images"][:3], None])
    raw = [reference.generate([q], [img], 8)[0] for q, img in zip(GEN_QUESTIONS, [*world["images"][:3], None])]
    stop = next((a[len(a) // 2 :][:2] for a in raw if len(a) >= 4), None)
    assert stop, f"no answer long enough to cut: {raw}"
    kwargs = {"until": [stop, "never-appears"], "max_new_tokens": 8, "temperature": 0, "do_sample": False}
    reqs = _instances(
        "generate_until", [(q, dict(kwargs), _visual, d, "t", "test") for d, q in enumerate(GEN_QUESTIONS)]
    )
    got = lm.generate_until(reqs)  # batch size 3: one batch of three, one of one, longest first
    assert got == [a[: a.find(stop)] if stop in a else a for a in raw]
    assert any(stop in a for a in raw)

    short = lm.generate_until(
        _instances("generate_until", [(GEN_QUESTIONS[0], {"max_new_tokens": 1}, _visual, 0, "t", "test")])
    )
    assert short == [reference.generate([GEN_QUESTIONS[0]], [world["images"][0]], 1)[0]]


def test_generate_until_samples_with_temperature_and_refuses_beams(world, lm):
    _docs(lm, [world["images"][0]])
    sample = {"max_new_tokens": 6, "temperature": 5.0, "top_p": 1.0}
    torch.manual_seed(0)
    first = lm.generate_until(
        _instances("generate_until", [(GEN_QUESTIONS[0], dict(sample), _visual, 0, "t", "test")] * 4)
    )
    torch.manual_seed(0)
    again = lm.generate_until(
        _instances("generate_until", [(GEN_QUESTIONS[0], dict(sample), _visual, 0, "t", "test")] * 4)
    )
    assert first == again  # seeded sampling is reproducible
    assert len(set(first)) > 1  # and it does sample: four draws at temperature 5 are not all the same
    with pytest.raises(NotImplementedError, match="num_beams"):
        lm.generate_until(_instances("generate_until", [(GEN_QUESTIONS[0], {"num_beams": 2}, _visual, 0, "t", "test")]))


def test_unsupported_requests_and_inputs_are_clear_errors(world, lm):
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([])
    lm.task_dict = {"t": {"test": [{"image": world["images"][0]}]}}
    two = _instances("generate_until", [("q", {}, lambda doc: [doc["image"], doc["image"]], 0, "t", "test")])
    with pytest.raises(ValueError, match="2 visuals"):
        lm.generate_until(two)
    video = _instances("generate_until", [("q", {}, lambda doc: ["clip.mp4"], 0, "t", "test")])
    with pytest.raises(ValueError, match="not a PIL image"):
        lm.generate_until(video)


# ------------------------------------------------------------------------------------------------ registration
def test_model_args_and_registration(world, lm, reference):
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from llava.eval.lmms_plugin import HiDropLlava, lmms_eval_models, parse_reduction_overrides

    # the bracketed overrides in --model_args gave the model the same schedule as our runner's command-line form
    schedule = {k: v for k, v in lm.reduction.to_dict().items() if k != "name"}
    assert schedule == {k: v for k, v in reference.model.config.reduction_config.to_dict().items() if k != "name"}
    assert tuple(schedule["prune_layers"]) == (2, 3) and tuple(schedule["keep_counts"]) == (8, 4)

    assert parse_reduction_overrides("exit_layer=24;keep_counts=[215,10,5,1]") == [
        "exit_layer=24",
        "keep_counts=[215,10,5,1]",
    ]
    assert parse_reduction_overrides("'a=1 b=2,3'") == ["a=1", "b=2,3"]
    assert parse_reduction_overrides(None) == []
    with pytest.raises(ValueError, match="key=value"):
        parse_reduction_overrides("exit_layer")
    with pytest.raises(TypeError, match="unknown model_args"):
        HiDropLlava(pretrained=world["ckpt"], reductoin="off")

    registry = ModelRegistryV2()  # what lmms-eval does with the entry point's payload
    for manifest in registry._coerce_payload_to_manifests(lmms_eval_models):
        registry.register_manifest(manifest)
    assert registry.get_model_class("hidrop_llava") is HiDropLlava
    if "hidrop_llava" in {ep.name for ep in entry_points(group="lmms_eval.models")}:
        assert MODEL_REGISTRY_V2.get_model_class("hidrop_llava") is HiDropLlava


def test_pyproject_declares_the_entry_point_and_the_extra():
    """Installing the package (``pip install -e .[lmms]``) registers ``hidrop_llava`` with lmms-eval."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    eps = project.get("entry-points", {}).get("lmms_eval.models", {})
    assert eps.get("hidrop_llava") == "llava.eval.lmms_plugin:lmms_eval_models"
    # lmms-eval itself is installed with --no-deps (its requirements pull torchvision and a CUDA torch); the extra
    # holds the few libraries it imports on the evaluation path.
    extra = {
        req.split("=")[0].split("<")[0].split(">")[0].strip().lower()
        for req in project["optional-dependencies"].get("lmms", [])
    }
    assert {"evaluate", "loguru", "pytablewriter", "pytz", "sacrebleu", "tenacity"} <= extra


# ------------------------------------------------------------------------------------------------ the documented command
def _documented_command() -> str:
    """The lmms-eval command of docs/Evaluation.md, continuation lines joined; the README shows the same one."""
    section = (REPO / "docs" / "Evaluation.md").read_text().split("## lmms-eval", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    command = " ".join(line.rstrip().rstrip("\\").strip() for line in block.strip().splitlines())
    assert command.startswith("python -m lmms_eval --model hidrop_llava") and "--tasks mme" in command
    assert f"`{command}`" in (REPO / "README.md").read_text()
    return command


@pytest.fixture(scope="module")
def tok64_checkpoint(tmp_path_factory):
    """A tiny checkpoint the documented preset runs on: 32 layers (tok64 prunes after 10..18, exits before 25) and
    256 vision tokens (its first stage keeps 215); random weights, 64 wide."""
    from tiny import tiny_config
    from transformers import AutoTokenizer, CLIPImageProcessor

    from llava.model import LlavaLlamaForCausalLM

    root = tmp_path_factory.mktemp("tok64")
    assets = build_tiny_assets(root / "assets", num_samples=4)
    tok = AutoTokenizer.from_pretrained(assets["llm"])
    torch.manual_seed(0)
    cfg = tiny_config(num_layers=32, vocab=len(tok), image_size=64, patch=4)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    LlavaLlamaForCausalLM(cfg).save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(root / "ckpt")
    return root / "ckpt"


def _mme_data_root(root: Path) -> Path:
    """$DATA_ROOT/MME in the eval scripts' layout: the MME fixture's 8 questions and ground truth, with images."""
    import shutil

    from PIL import Image as PILImage

    fixture = REPO / "tests" / "fixtures" / "eval" / "mme"
    mme = root / "MME"
    shutil.copytree(fixture / "MME_Benchmark_release_version", mme / "MME_Benchmark_release_version")
    shutil.copy(fixture / "llava_mme_all.jsonl", mme / "llava_mme.jsonl")
    for n, line in enumerate((mme / "llava_mme.jsonl").read_text().splitlines()):
        path = mme / "MME_Benchmark_release_version" / json.loads(line)["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.new("RGB", (40 + 8 * n, 30), (30 * n, 90, 200 - 20 * n)).save(path)
    return root


def test_the_documented_command_runs_offline_on_local_data(tok64_checkpoint, tmp_path):
    """docs/Evaluation.md's command line, as written (CKPT filled in), in a fresh folder with DATA_ROOT pointing at
    local MME files: lmms-eval finds the task, runs tok64, and reports our scorer's MME score for those answers."""
    from llava.eval import score

    data_root = _mme_data_root(tmp_path / "data")
    command = _documented_command().replace("CKPT", str(tok64_checkpoint))
    work = tmp_path / "run"
    work.mkdir()
    env = _plugin_env(tmp_path)
    env.update(DATA_ROOT=str(data_root), PATH=os.pathsep.join([os.path.dirname(sys.executable), env["PATH"]]))
    proc = subprocess.run(["bash", "-c", command + " --log_samples --verbosity WARNING"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    log = proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.returncode == 0 and "Tasks not found" not in log, log
    results_files = list((work / "lmms_results").rglob("*_results.json"))
    assert len(results_files) == 1, log
    got = json.loads(results_files[0].read_text())["results"]["mme"]["score,none"]
    # the same answers through llava.eval.score (MME: perception total)
    samples = [json.loads(line) for line in next((work / "lmms_results").rglob("*_samples_mme.jsonl")).read_text()
               .splitlines()]
    assert len(samples) == 8
    questions = [json.loads(line) for line in (data_root / "MME" / "llava_mme.jsonl").read_text().splitlines()]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({**questions[s["doc_id"]], "prompt": questions[s["doc_id"]]["text"],
                                           "text": s["filtered_resps"][0]}) + "\n" for s in samples))
    result = tmp_path / "mme.json"
    score.main(["--bench", "mme", "--answers-file", str(answers), "--annotation-dir",
                str(data_root / "MME" / "MME_Benchmark_release_version"), "--result-file", str(result)])
    assert got == pytest.approx(json.loads(result.read_text())["score"])


def test_a_task_without_its_local_files_names_them(tmp_path, monkeypatch):
    """No hub fallback: the task stops at the first missing file of the eval scripts' layout, naming it."""
    from lmms_eval.tasks import TaskManager

    from llava.eval.lmms_tasks import TASK_DIR
    from llava.eval.lmms_tasks.task import TASKS, LocalBenchmarkTask

    assert {p.stem for p in Path(TASK_DIR).glob("*.yaml")} == set(TASKS)
    assert set(TaskManager("ERROR", include_path=TASK_DIR).all_tasks) == set(TASKS)  # every YAML indexes
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"missing MME question file .*nowhere/MME/llava_mme\.jsonl"):
        LocalBenchmarkTask({"task": "mme", "class": LocalBenchmarkTask})


def test_a_limited_task_scores_its_subset_and_says_so(tmp_path, monkeypatch, caplog):
    """lmms-eval's --limit N hands the task the first N answers: our scorer scores those questions only (as
    ``llava.eval.score --limit``), and the log says it is a subset."""
    from llava.eval import score
    from llava.eval.lmms_tasks.task import LocalBenchmarkTask

    data_root = _mme_data_root(tmp_path / "data")
    monkeypatch.setenv("DATA_ROOT", str(data_root))
    task = LocalBenchmarkTask({"task": "mme"})
    docs = list(task.test_docs())
    image_file = data_root / "MME" / "MME_Benchmark_release_version" / "existence" / "img1.jpg"
    from PIL import Image as PILImage

    assert len(docs) == 8 and task.doc_to_visual(docs[0])[0].size == PILImage.open(image_file).size
    texts = ["Yes", "No", "yes", "no"]
    with caplog.at_level("INFO", logger="llava.eval.lmms_tasks"):
        got = task.aggregation()["score"]([{"index": d["index"], "text": t} for d, t in zip(docs, texts)])
    assert "subset, the 4 answered of the 8 questions" in caplog.text
    answers = tmp_path / "answers.jsonl"
    qfile = data_root / "MME" / "llava_mme.jsonl"
    questions = [json.loads(line) for line in qfile.read_text().splitlines()]
    answers.write_text("".join(json.dumps({**q, "prompt": q["text"], "text": t}) + "\n"
                               for q, t in zip(questions, texts)))
    result = tmp_path / "mme.json"
    score.main(["--bench", "mme", "--answers-file", str(answers), "--question-file", str(qfile), "--limit", "4",
                "--annotation-dir", str(data_root / "MME" / "MME_Benchmark_release_version"), "--result-file",
                str(result)])
    assert got == pytest.approx(json.loads(result.read_text())["score"])
