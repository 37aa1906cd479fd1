"""LazySupervisedDataset, the collator and the image helpers, on real digit scans written as PNGs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from data_fixtures import (  # noqa: F401  (fixture imports)
    PROCESSOR_SIZE,
    image_processor,
    image_record,
    text_record,
    tiny_tokenizer,
    write_digit_png,
    write_json,
)
from PIL import Image
from torch.utils.data import DataLoader

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import ImageLoadError, SampleError, expand2square, load_image, process_images
from llava.train.collator import DataCollatorForSupervisedDataset
from llava.train.dataset import DatasetFormatError, ImageFolderError, LazySupervisedDataset
from llava.train.preprocess import OverlongSampleError, expanded_length, preprocess

NUM_IMAGE_TOKENS = 4


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    write_digit_png(folder / "ok0.png", index=0)
    write_digit_png(folder / "ok1.png", index=1, size=(16, 16))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    return folder


def make_dataset(tmp_path, records, tokenizer, processor, image_dir, **kwargs) -> LazySupervisedDataset:
    data = write_json(tmp_path / "data.json", records)
    kwargs.setdefault("num_image_tokens", NUM_IMAGE_TOKENS)
    return LazySupervisedDataset(data, tokenizer, processor, image_folder=image_dir, template="vicuna_v1", **kwargs)


# === Good samples ===


def test_image_and_text_samples(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    ds = make_dataset(
        tmp_path, [image_record("a", "ok0.png"), text_record("b")], tiny_tokenizer, image_processor, image_dir
    )
    assert len(ds) == 2
    img_sample, text_sample = ds[0], ds[1]
    assert img_sample["has_image"] is True and text_sample["has_image"] is False
    assert img_sample["image"].shape == (3, PROCESSOR_SIZE, PROCESSOR_SIZE)
    assert img_sample["image"].abs().sum() > 0
    # text-only: an all-zero image of the processor's size, so the vision tower still runs for this rank
    assert torch.equal(text_sample["image"], torch.zeros(3, PROCESSOR_SIZE, PROCESSOR_SIZE))
    assert (img_sample["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1
    assert (text_sample["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 0
    expected = preprocess(image_record("a", "ok0.png"), tiny_tokenizer, "vicuna_v1", num_image_tokens=NUM_IMAGE_TOKENS)
    assert torch.equal(img_sample["input_ids"], expected.input_ids)
    assert torch.equal(img_sample["labels"], expected.labels)


def test_lengths_and_modality_lengths(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    records = [
        image_record("a", "ok0.png", question="<image>\nWhat digit is shown?", answer="3"),  # 5 + 1 words
        text_record("b", question="What is two plus three?", answer="Two plus three is five."),  # 5 + 5 words
    ]
    ds = make_dataset(tmp_path, records, tiny_tokenizer, image_processor, image_dir)
    # upstream's str.split() word count: "<image>" counts as a word; image samples get a flat +128
    assert ds.lengths == [5 + 1 + 128, 10]
    assert ds.modality_lengths == [6, -10]  # the sign marks text-only samples for the grouped sampler


# === Bad samples, raise mode ===


def test_missing_image_error_names_file_and_sample(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    ds = make_dataset(
        tmp_path, [image_record("lost-1", "nope/missing.png")], tiny_tokenizer, image_processor, image_dir
    )
    with pytest.raises(ImageLoadError) as info:
        ds[0]
    err = info.value
    message = str(err)
    assert "missing" in message and str(image_dir / "nope" / "missing.png") in message
    assert "lost-1" in message and str(tmp_path / "data.json") in message
    assert err.reason == "image_missing" and err.sample_id == "lost-1"


def test_corrupt_image_error_names_file(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    ds = make_dataset(tmp_path, [image_record("bad-png", "corrupt.png")], tiny_tokenizer, image_processor, image_dir)
    with pytest.raises(ImageLoadError) as info:
        ds[0]
    message = str(info.value)
    assert "unreadable or corrupt" in message and str(image_dir / "corrupt.png") in message and "bad-png" in message
    assert info.value.reason == "image_unreadable"


def test_truncated_png_is_unreadable(tmp_path: Path) -> None:
    good = write_digit_png(tmp_path / "full.png", index=3)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:-40])  # a download that stopped early
    with pytest.raises(ImageLoadError, match="cut.png"):
        load_image(cut)


def test_overlong_sample_raises(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    ds = make_dataset(
        tmp_path, [image_record("long-1", "ok0.png")], tiny_tokenizer, image_processor, image_dir, model_max_length=20
    )
    with pytest.raises(OverlongSampleError, match="long-1"):
        ds[0]


def test_image_span_is_never_truncated(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    long_answer = " ".join(["Two plus three is five."] * 30)
    rec = image_record("t", "ok0.png", answer=long_answer)
    full = preprocess(rec, tiny_tokenizer, "vicuna_v1", num_image_tokens=NUM_IMAGE_TOKENS)
    max_len = expanded_length(full.input_ids, NUM_IMAGE_TOKENS) - 50
    ds = make_dataset(tmp_path, [rec], tiny_tokenizer, image_processor, image_dir, model_max_length=max_len)
    sample = ds[0]
    ids = sample["input_ids"].tolist()
    assert IMAGE_TOKEN_INDEX in ids
    assert expanded_length(ids, NUM_IMAGE_TOKENS) == max_len  # cut exactly at the limit, vision tokens included
    assert ids == full.input_ids.tolist()[: len(ids)]  # only the tail was removed
    assert (sample["labels"] != IGNORE_INDEX).any()


# === Bad samples, skip mode ===


def test_skip_mode_counts_by_reason_and_reports(tmp_path, tiny_tokenizer, image_processor, image_dir, caplog) -> None:  # noqa: F811
    records = [
        image_record("good-0", "ok0.png"),
        image_record("missing-1", "missing.png"),
        image_record("corrupt-2", "corrupt.png"),
        # the answer would start past position 40: truncation would leave nothing to learn
        image_record("long-3", "ok1.png", question="<image>\n" + "What digit is shown? " * 5),
        text_record("good-4"),
        image_record("missing-5", "missing-too.png"),
    ]
    ds = make_dataset(
        tmp_path, records, tiny_tokenizer, image_processor, image_dir, model_max_length=40, on_bad_sample="skip"
    )
    with caplog.at_level(logging.WARNING, logger="llava.train.dataset"):
        got = [ds[i] for i in range(len(ds))]
    # bad indices return the next good sample (wrapping around), so the batch keeps its size
    expected_source = [0, 4, 4, 4, 4, 0]
    for sample, src in zip(got, expected_source):
        assert torch.equal(sample["input_ids"], ds.load_sample(src)["input_ids"])
    assert ds.skipped_counts() == {"image_missing": 2, "image_unreadable": 1, "overlong": 1}
    assert ds.skipped_indices() == {1: "image_missing", 2: "image_unreadable", 3: "overlong", 5: "image_missing"}
    skip_logs = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert len(skip_logs) == 4  # once per bad sample, although ds[1], ds[2] and ds[3] all walk past index 3
    assert any("missing.png" in m and "missing-1" in m for m in skip_logs)

    # a second epoch neither re-reads nor re-counts known bad samples
    _ = [ds[i] for i in range(len(ds))]
    assert ds.skipped_counts() == {"image_missing": 2, "image_unreadable": 1, "overlong": 1}

    report_logger = logging.getLogger("test.report")
    with caplog.at_level(logging.WARNING, logger="test.report"):
        counts = ds.report_skips(report_logger)
    assert counts == {"image_missing": 2, "image_unreadable": 1, "overlong": 1}
    summary = [r.getMessage() for r in caplog.records if r.name == "test.report"]
    assert len(summary) == 1 and "skipped 4 of 6" in summary[0] and "missing-1" in summary[0]


def test_scan_counts_every_bad_sample(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    records = [image_record("a", "ok0.png"), image_record("b", "gone.png"), text_record("c")]
    ds = make_dataset(tmp_path, records, tiny_tokenizer, image_processor, image_dir, on_bad_sample="skip")
    assert ds.scan() == {"image_missing": 1}
    strict = make_dataset(tmp_path, records, tiny_tokenizer, image_processor, image_dir)
    with pytest.raises(ImageLoadError, match="gone.png"):
        strict.scan()


def test_dataset_pickles_for_spawned_workers(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    import pickle

    ds = make_dataset(
        tmp_path,
        [image_record("a", "ok0.png"), image_record("b", "gone.png")],
        tiny_tokenizer,
        image_processor,
        image_dir,
        on_bad_sample="skip",
    )
    _ = ds[1]
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.skipped_counts() == {"image_missing": 1}
    assert torch.equal(copy[0]["input_ids"], ds[0]["input_ids"])


def test_skip_mode_with_no_good_sample_raises(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    ds = make_dataset(
        tmp_path, [image_record("x", "corrupt.png")], tiny_tokenizer, image_processor, image_dir, on_bad_sample="skip"
    )
    with pytest.raises(RuntimeError, match="every sample"):
        ds[0]


# === Whole-run checks (before training starts) ===


def test_empty_data_file_is_an_error(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    with pytest.raises(DatasetFormatError, match="holds no records"):
        make_dataset(tmp_path, [], tiny_tokenizer, image_processor, image_dir)


@pytest.mark.parametrize("on_bad_sample", ["raise", "skip"])
def test_missing_image_folder_is_an_error(tmp_path, tiny_tokenizer, image_processor, on_bad_sample) -> None:  # noqa: F811
    records = [image_record("a", "ok0.png"), text_record("b")]
    with pytest.raises(ImageFolderError, match=r"image folder .*nonexistent does not exist.*1 records"):
        make_dataset(tmp_path, records, tiny_tokenizer, image_processor, tmp_path / "nonexistent",
                     on_bad_sample=on_bad_sample)


def test_wrong_image_folder_in_skip_mode_is_an_error(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    # The folder exists but holds none of the images: skipping would silently train text-only.
    records = [image_record(f"i{i}", f"elsewhere/{i}.png") for i in range(3)] + [text_record("t")]
    with pytest.raises(ImageFolderError, match="none of the first 3 images"):
        make_dataset(tmp_path, records, tiny_tokenizer, image_processor, image_dir, on_bad_sample="skip")
    # one findable image is enough to start; the missing ones are counted skips
    ds = make_dataset(tmp_path, [*records, image_record("ok", "ok0.png")], tiny_tokenizer, image_processor,
                      image_dir, on_bad_sample="skip")
    assert len(ds) == 5


def test_text_only_data_needs_no_image_folder(tmp_path, tiny_tokenizer, image_processor) -> None:  # noqa: F811
    ds = make_dataset(tmp_path, [text_record("t")], tiny_tokenizer, image_processor, tmp_path / "nonexistent")
    assert ds[0]["has_image"] is False


def test_skipped_samples_travel_with_batches_from_workers(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    """With DataLoader workers the main process's dataset never sees a skip; the batches must carry them."""
    from torch.utils.data import DataLoader

    records = [image_record("good-0", "ok0.png"), image_record("missing-1", "missing.png"), text_record("good-2"),
               image_record("corrupt-3", "corrupt.png"), text_record("good-4"), image_record("missing-5", "gone.png")]
    ds = make_dataset(tmp_path, records, tiny_tokenizer, image_processor, image_dir, on_bad_sample="skip")
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=DataCollatorForSupervisedDataset(0))
    met: dict[int, str] = {}
    for batch in loader:
        met.update(dict(batch["bad_samples"]))
    assert ds.skipped_counts() == {}  # the workers' copies did the skipping
    assert met == {1: "image_missing", 3: "image_unreadable", 5: "image_missing"}
    assert ds.report_skips(bad=met) == {"image_missing": 2, "image_unreadable": 1}


def test_sample_errors_survive_pickling(tmp_path: Path) -> None:
    import pickle

    err = ImageLoadError("image file is missing: x.png", path="x.png", problem="missing", sample_id="s")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.reason == "image_missing"
    # DataLoader workers re-raise as type(err)(text): that constructor call must work
    assert isinstance(ImageLoadError("text"), SampleError)


# === Data file errors ===


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"id": 1}', "JSON list"),
        ('[{"id": "r0", "conversations": []}]', "record 0 .*r0.*conversations"),
        ('[{"id": "r0", "conversations": [{"from": "human"}]}]', "turn 0"),
        ('[{"id": "r0", "image": 3, "conversations": [{"from": "human", "value": "x"}]}]', "image"),
    ],
)
def test_malformed_data_file(tmp_path, tiny_tokenizer, image_processor, content, match) -> None:  # noqa: F811
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetFormatError, match=match) as info:
        LazySupervisedDataset(path, tiny_tokenizer, image_processor)
    assert "broken.json" in str(info.value)


def test_missing_data_file_and_bad_options(tmp_path, tiny_tokenizer, image_processor) -> None:  # noqa: F811
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        LazySupervisedDataset(tmp_path / "nowhere.json", tiny_tokenizer, image_processor)
    data = write_json(tmp_path / "d.json", [text_record("a")])
    with pytest.raises(ValueError, match="on_bad_sample"):
        LazySupervisedDataset(data, tiny_tokenizer, image_processor, on_bad_sample="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="anyres"):
        LazySupervisedDataset(data, tiny_tokenizer, image_processor, image_aspect_ratio="anyres")


# === Collator ===


def test_collator_pads_and_masks_by_true_length(tmp_path, tiny_tokenizer, image_processor, image_dir) -> None:  # noqa: F811
    records = [
        image_record("a", "ok0.png"),
        text_record("unk", question="What is <unk> plus three?"),  # a genuine <unk> (id 0 = the pad id) in the text
    ]
    ds = make_dataset(tmp_path, records, tiny_tokenizer, image_processor, image_dir)
    collate = DataCollatorForSupervisedDataset(pad_token_id=tiny_tokenizer.pad_token_id)
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate)))
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert n1 > n0  # the text-only sample is longer, so the image sample gets padded
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, n1)
    assert batch["images"].shape == (2, 3, PROCESSOR_SIZE, PROCESSOR_SIZE)
    assert batch["has_image"].tolist() == [True, False]
    assert batch["input_ids"][0, n0:].eq(tiny_tokenizer.pad_token_id).all()
    assert batch["labels"][0, n0:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"][0].tolist() == [1] * n0 + [0] * (n1 - n0)
    unk_positions = (batch["input_ids"][1] == tiny_tokenizer.unk_token_id).nonzero().flatten().tolist()
    assert unk_positions, "the text really contains the <unk> id"
    assert batch["attention_mask"][1].tolist() == [1] * n1  # the real <unk> is attended, not treated as padding
    assert torch.equal(batch["input_ids"][1], ds[1]["input_ids"])


def test_collator_rejects_mismatched_images() -> None:
    collate = DataCollatorForSupervisedDataset(pad_token_id=0)
    a = {
        "input_ids": torch.tensor([1, 5]),
        "labels": torch.tensor([-100, 5]),
        "image": torch.zeros(3, 4, 4),
        "has_image": False,
    }
    b = dict(a, image=torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        collate([a, b])
    with pytest.raises(ValueError, match="empty"):
        collate([])


# === Image helpers ===


def test_expand2square_pads_shorter_side_centred() -> None:
    img = Image.new("RGB", (6, 3), (255, 0, 0))
    sq = expand2square(img, (1, 2, 3))
    assert sq.size == (6, 6)
    assert sq.getpixel((0, 0)) == (1, 2, 3) and sq.getpixel((0, 1)) == (255, 0, 0)
    assert sq.getpixel((0, 3)) == (255, 0, 0) and sq.getpixel((0, 4)) == (1, 2, 3)
    assert expand2square(sq, 0) is sq


def test_process_images_modes(tmp_path, image_processor) -> None:  # noqa: F811
    wide = load_image(write_digit_png(tmp_path / "wide.png", index=5, size=(40, 20)))
    pad = process_images([wide, wide], image_processor, "pad")
    square = process_images([wide], image_processor, "square")
    assert pad.shape == (2, 3, PROCESSOR_SIZE, PROCESSOR_SIZE) and pad.dtype == torch.float32
    assert square.shape == (1, 3, PROCESSOR_SIZE, PROCESSOR_SIZE)
    assert torch.equal(process_images([wide], image_processor, None), square)
    # padding keeps the whole digit but adds mean-coloured bars, so the two modes differ
    assert not torch.allclose(pad[0], square[0])
    # the bars are the processor's mean colour (122, 116, 104), which normalises to about zero
    assert pad[0, :, 0, :].abs().max() < 0.02
    with pytest.raises(ValueError, match="anyres"):
        process_images([wide], image_processor, "anyres")
