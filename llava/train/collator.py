"""Batch samples from :class:`~llava.train.dataset.LazySupervisedDataset` into right-padded tensors.

Two deliberate differences from upstream's collator:

* ``attention_mask`` comes from each sample's true length, not from ``input_ids != pad_token_id``. The pad
  token is ``<unk>``, so upstream treated any genuine ``<unk>`` in the text as padding.
* No truncation: it has already happened per sample in preprocessing, where the image position is known.
  Truncating here (before the image expands to its vision tokens, as upstream did) could cut through the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava.constants import IGNORE_INDEX

__all__ = ["DataCollatorForSupervisedDataset"]


@dataclass(frozen=True)
class DataCollatorForSupervisedDataset:
    """Right-pads ``input_ids`` with ``pad_token_id`` and ``labels`` with ``IGNORE_INDEX``; stacks images.

    Returns ``input_ids`` [B, T] long, ``labels`` [B, T] long, ``attention_mask`` [B, T] long (1 = token,
    0 = padding), ``images`` [B, 3, H, W], ``has_image`` [B] bool, and ``bad_samples``: the ``(index, reason)``
    pairs the samples' loaders skipped, for the trainer's tally (it removes them before the forward).
    """

    pad_token_id: int

    def __call__(self, instances: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not instances:
            raise ValueError("cannot collate an empty batch")
        input_ids = [torch.as_tensor(x["input_ids"], dtype=torch.long) for x in instances]
        labels = [torch.as_tensor(x["labels"], dtype=torch.long) for x in instances]
        for i, (ids, lab) in enumerate(zip(input_ids, labels)):
            if ids.ndim != 1 or ids.shape != lab.shape:
                raise ValueError(
                    f"sample {i}: input_ids {tuple(ids.shape)} and labels {tuple(lab.shape)} must be equal 1-D"
                )
        lengths = torch.tensor([len(ids) for ids in input_ids])  # [B]
        max_len = int(lengths.max())
        batch_ids = torch.full((len(instances), max_len), self.pad_token_id, dtype=torch.long)  # [B, T]
        batch_labels = torch.full((len(instances), max_len), IGNORE_INDEX, dtype=torch.long)  # [B, T]
        for i, (ids, lab) in enumerate(zip(input_ids, labels)):
            batch_ids[i, : len(ids)] = ids
            batch_labels[i, : len(lab)] = lab
        attention_mask = (torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [B, T]

        images = [x["image"] for x in instances]
        shapes = {tuple(img.shape) for img in images}
        if len(shapes) != 1:
            raise ValueError(f"images in a batch must share one shape to be stacked, got {sorted(shapes)}")
        return {
            "input_ids": batch_ids,
            "labels": batch_labels,
            "attention_mask": attention_mask,
            "images": torch.stack(images),  # [B, 3, H, W]
            "has_image": torch.tensor([bool(x["has_image"]) for x in instances], dtype=torch.bool),  # [B]
            "bad_samples": [tuple(pair) for x in instances for pair in x.get("bad_samples", ())],
        }
