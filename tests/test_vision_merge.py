"""MustDrop's vision stage (llava/model/vision_merge.py) against a slow, physically-shortened reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig

from llava.model.vision_merge import (
    VisionTokens,
    block_similarity,
    cls_attention,
    encode_with_local_merging,
    feature_layer_index,
    merge_blocks,
)
from llava.model.vision_tower import CLIPVisionTower

GRID = 6  # 48 px / 8 px patches -> 6 x 6 patch grid
NUM_LAYERS = 4


def make_tower(select_layer: int = -2, select_feature: str = "patch", attn: str = "sdpa") -> CLIPVisionTower:
    """Tiny random CLIP; the same seed gives the same weights for every variant."""
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        image_size=48,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=2,
    )
    tower = CLIPVisionTower(cfg, select_layer=select_layer, select_feature=select_feature).eval()
    tower.vision_tower.set_attn_implementation(attn)
    return tower


def make_images() -> torch.Tensor:  # [4, 3, 48, 48]
    """Noise plus constant-colour quadrants, so blocks inside a quadrant are near-identical after layer 0.

    Image 0: pure noise (nothing merges); 1: one flat quadrant; 2: two; 3: flat everywhere. With window 3 every
    quadrant is exactly one block, so the four images merge 0, 1, 2 and 4 blocks.
    """
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 48, 48, generator=g)
    images[1, :, :24, :24] = 0.7
    images[2, :, :24, :24] = -0.5
    images[2, :, 24:, 24:] = 1.2
    images[3] = 0.3
    return images


def reference_encode(
    ref: CLIPVisionTower, image: torch.Tensor, threshold: float, window: int, key_ratio: float
) -> dict:
    """One image, the upstream way: physically shorten the sequence after layer 0, no masks anywhere.

    The shortened sequence uses upstream's order, [CLS, merged blocks by descending similarity, unmerged tokens in
    raster order], so agreement with the implementation (which keeps raster slots) also checks the claim that the
    order does not matter inside CLIP. ``ref`` must use eager attention so the layer returns its probabilities.
    """
    model = ref.vision_tower
    layers = model.encoder.layers
    feature_index = ref.select_layer if ref.select_layer >= 0 else len(layers) + 1 + ref.select_layer
    hidden = layers[0](model.pre_layrnorm(model.embeddings(image[None])), None)[0]  # [1+P, D]
    cls, patches = hidden[:1], hidden[1:]

    blocks = []  # (similarity, raster patch indices of the block, raster-ordered inside the block)
    for block_row in range(GRID // window):
        for block_col in range(GRID // window):
            idx = [
                (block_row * window + r) * GRID + block_col * window + c for r in range(window) for c in range(window)
            ]
            pairs = [(i, j) for i in idx for j in idx if i != j]
            sim = sum(F.cosine_similarity(patches[i], patches[j], dim=0).item() for i, j in pairs) / len(pairs)
            blocks.append((sim, idx))
    to_merge = sorted([b for b in blocks if b[0] >= threshold], key=lambda b: -b[0])
    merged_away = {i for _, idx in to_merge for i in idx}
    unmerged = [i for i in range(GRID * GRID) if i not in merged_away]
    tokens = [patches[idx].mean(dim=0) for _, idx in to_merge] + [patches[i] for i in unmerged]
    slot_of = [idx[-1] for _, idx in to_merge] + unmerged  # shortened position -> raster slot (dst = last)

    seq = torch.cat([cls, torch.stack(tokens)])[None]  # [1, 1+n, D]
    for layer in layers[1:feature_index]:
        seq = layer(seq, None)
    key_layer = layers[feature_index]
    _, probs = key_layer.self_attn(hidden_states=key_layer.layer_norm1(seq))  # eager: [1, H, S, S]
    cls_attn = probs[0, :, 0, 1:].mean(dim=0)  # [n]
    top = cls_attn.topk(math.ceil(key_ratio * len(tokens))).indices.tolist()
    return {
        "cls": seq[0, 0],
        "features": {slot_of[p]: seq[0, 1 + p] for p in range(len(tokens))},
        "merged": {idx[-1] for _, idx in to_merge},
        "key": {slot_of[p] for p in top},
    }


def check_against_reference(out: VisionTokens, ref: CLIPVisionTower, images: torch.Tensor, **kwargs) -> list[int]:
    offset = 1 if ref.select_feature == "cls_patch" else 0
    merge_counts = []
    for b in range(images.shape[0]):
        want = reference_encode(ref, images[b], **kwargs)
        valid = out.valid[b, offset:]
        assert set(valid.nonzero().flatten().tolist()) == set(want["features"])
        assert set(out.merged[b, offset:].nonzero().flatten().tolist()) == want["merged"]
        assert set(out.key[b, offset:].nonzero().flatten().tolist()) == want["key"]
        slots = sorted(want["features"])
        expected = torch.stack([want["features"][s] for s in slots])
        torch.testing.assert_close(out.features[b, offset:][slots], expected, atol=1e-5, rtol=1e-5)
        assert torch.all(out.features[b, offset:][~valid] == 0)  # invalid slots are zeroed
        if offset:
            assert out.valid[b, 0] and not out.key[b, 0] and not out.merged[b, 0]
            torch.testing.assert_close(out.features[b, 0], want["cls"], atol=1e-5, rtol=1e-5)
        merge_counts.append(len(want["merged"]))
    return merge_counts


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("window", [3, 2])
@pytest.mark.parametrize(("select_layer", "select_feature"), [(-2, "patch"), (-3, "patch"), (1, "cls_patch")])
def test_matches_physically_shortened_reference(attn, window, select_layer, select_feature):
    tower = make_tower(select_layer, select_feature, attn)
    ref = make_tower(select_layer, select_feature, "eager")
    images = make_images()
    kwargs = {"threshold": 0.8, "window": window, "key_ratio": 0.08}
    out = encode_with_local_merging(tower, images, merge_threshold=0.8, window=window, key_ratio=0.08)
    assert out.features.shape == (4, tower.num_patches, 32)
    assert out.valid.shape == out.key.shape == out.merged.shape == (4, tower.num_patches)
    assert torch.isfinite(out.features).all()
    counts = check_against_reference(out, ref, images, **kwargs)
    if window == 3:
        assert counts == [0, 1, 2, 4]  # merging happens, and differently per image


def test_batch_equals_single():
    tower = make_tower()
    images = make_images()
    batch = encode_with_local_merging(tower, images)
    assert batch.merged.sum(dim=1).tolist() == [0, 1, 2, 4]  # one batch, four different merge counts
    for b in range(images.shape[0]):
        single = encode_with_local_merging(tower, images[b : b + 1])
        assert torch.equal(batch.valid[b : b + 1], single.valid)
        assert torch.equal(batch.merged[b : b + 1], single.merged)
        assert torch.equal(batch.key[b : b + 1], single.key)
        torch.testing.assert_close(batch.features[b : b + 1], single.features, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("select_feature", ["patch", "cls_patch"])
@pytest.mark.parametrize("threshold", [None, 1.5, float("inf")])
def test_no_merging_equals_tower_forward(attn, select_feature, threshold):
    tower = make_tower(select_feature=select_feature, attn=attn)
    images = make_images()  # would merge at 0.8
    out = encode_with_local_merging(tower, images, merge_threshold=threshold)
    assert torch.equal(out.features, tower(images))
    assert out.valid.all() and not out.merged.any()
    assert out.key.sum(dim=1).tolist() == [math.ceil(0.08 * GRID * GRID)] * 4


@pytest.mark.parametrize("key_ratio", [0.08, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("window", [3, 2])
def test_key_count_is_ceil_of_ratio_times_valid_patches(key_ratio, window):
    out = encode_with_local_merging(make_tower(), make_images(), window=window, key_ratio=key_ratio)
    n_valid = out.valid.sum(dim=1).tolist()
    assert out.key.sum(dim=1).tolist() == [math.ceil(key_ratio * n) for n in n_valid]
    assert not (out.key & ~out.valid).any()  # keys are valid tokens
    if key_ratio == 1.0:
        assert torch.equal(out.key, out.valid)


def test_merge_blocks_threshold_is_inclusive_and_dst_is_block_mean():
    torch.manual_seed(3)
    patches = torch.randn(2, 16, 8)  # [B, P, D], 4 x 4 grid, 2 x 2 windows
    block0 = [0, 1, 4, 5]  # top-left block; its dst (last slot in raster order) is 5
    patches[0, block0] = torch.randn(8) + 0.05 * torch.randn(4, 8)
    score = block_similarity(patches[:, block0][:, None])[0, 0]  # [B, nb=1, k=4, D] -> image 0's score
    assert score > 0.9

    out, valid, merged = merge_blocks(patches, 2, score.item())  # exactly at the threshold: merges (>=)
    assert merged[0].nonzero().flatten().tolist() == [5] and not merged[1].any()
    assert valid[0].logical_not().nonzero().flatten().tolist() == [0, 1, 4]
    assert valid[1].all()
    torch.testing.assert_close(out[0, 5], patches[0, block0].mean(dim=0))
    untouched = valid[0] & ~merged[0]  # [P]: unmerged slots keep their own token
    assert torch.equal(out[0, untouched], patches[0, untouched])
    assert torch.equal(out[1], patches[1])  # image 1 has no similar block: untouched

    above = torch.nextafter(score, torch.tensor(float("inf"))).item()
    _, valid, merged = merge_blocks(patches, 2, above)
    assert valid.all() and not merged.any()


def test_cls_attention_over_valid_keys_equals_attention_on_the_shortened_sequence():
    layer = make_tower().vision_tower.encoder.layers[-1]
    torch.manual_seed(4)
    hidden = torch.randn(3, 10, 32)  # [B, S, D]
    key_valid = torch.rand(3, 10) > 0.4  # [B, S]
    key_valid[:, 0] = True  # CLS
    probs = cls_attention(layer, hidden, key_valid)  # [B, S]
    for b in range(3):
        short = cls_attention(layer, hidden[b : b + 1, key_valid[b]], key_valid[b : b + 1, key_valid[b]])
        torch.testing.assert_close(probs[b, key_valid[b]], short[0])
        assert torch.all(probs[b, ~key_valid[b]] == 0)


def test_feature_layer_index_formula():
    assert feature_layer_index(-2, 24) == 23  # LLaVA-1.5: features hidden_states[-2], key attention of layer 23
    assert feature_layer_index(-3, 24) == 22
    assert feature_layer_index(5, 24) == 5
    for bad in (-1, 0, 24, -25, 30):
        with pytest.raises(ValueError, match="select_layer"):
            feature_layer_index(bad, 24)


def test_bad_inputs_give_clear_errors():
    tower, images = make_tower(), make_images()
    with pytest.raises(ValueError, match="not divisible by window 4"):
        encode_with_local_merging(tower, images, window=4)
    with pytest.raises(ValueError, match="window"):
        encode_with_local_merging(tower, images, window=1)
    with pytest.raises(ValueError, match="merge_threshold"):
        encode_with_local_merging(tower, images, merge_threshold=float("nan"))
    for ratio in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="key_ratio"):
            encode_with_local_merging(tower, images, key_ratio=ratio)
    for select_layer in (-1, 0):
        with pytest.raises(ValueError, match="select_layer"):
            encode_with_local_merging(make_tower(select_layer=select_layer), images)
    flash = make_tower()
    # The raw field: the property setter would try to load the flash kernels. Flash attention takes no [B,1,1,S] mask.
    flash.config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(ValueError, match="attention"):
        encode_with_local_merging(flash, images)


def test_reference_tower_has_the_same_weights():
    """Guard for the tests themselves: the eager reference tower is the tested tower with another attention."""
    tower, ref = make_tower(), make_tower(attn="eager")
    assert (tower.config._attn_implementation, ref.config._attn_implementation) == ("sdpa", "eager")
    for a, b in zip(tower.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
