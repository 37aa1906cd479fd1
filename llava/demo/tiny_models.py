"""Tiny stand-ins for CLIP ViT-L/14-336 and Vicuna, built locally for the CPU demo.

* ``clip-tiny``: a 3-layer, 64-wide ``CLIPVisionModel`` for 64x64 images with 8 px patches (64 patch
  tokens, like LLaVA's 576 at toy scale) and a ``CLIPImageProcessor`` in the same directory.
* ``llama-tiny``: an 8-layer, 128-wide ``LlamaForCausalLM`` sized to the demo tokenizer.

LLaVA keeps the vision tower frozen and relies on CLIP's pretraining for features that name what is
in each region. A randomly initialised tower only scrambles pixels, so :func:`build_clip_tiny`
measures how much digit information the frozen features carry (linear probes on the penultimate
layer, the one LLaVA reads) and, when they are weak, pretrains the tower for a few hundred steps on
training grids before saving it. Only training-split scans are ever used to fit anything; probes
are scored on grids made of held-out scans.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from llava.demo import digits

logger = logging.getLogger(__name__)

# CLIP's normalisation constants (openai/clip-vit-large-patch14-336 uses the same ones).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

VISION_CONFIG: dict[str, object] = {
    "image_size": digits.IMAGE_SIZE,
    "patch_size": 8,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "projection_dim": 64,
    "hidden_act": "quick_gelu",  # as in OpenAI CLIP
}

LLM_CONFIG: dict[str, object] = {
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,  # Vicuna / Llama-2 keep a separate lm_head
}

SELECT_LAYER = -2  # LLaVA-1.5's mm_vision_select_layer
PROBE_THRESHOLD = 0.90  # pretrain the tower when the pooled quadrant probe is below this


@dataclass(frozen=True)
class ProbeResult:
    """Held-out accuracy of linear probes that predict each quadrant's digit from frozen features.

    ``concat``: logistic regression on the 16 patch tokens of the quadrant concatenated (1,024 dims),
    an upper bound on what is linearly decodable. ``pooled``: the same on their mean (64 dims), closer
    to what an attention head that averages the quadrant's tokens can read, and the number that
    decides whether the tower is pretrained.
    """

    concat: float
    pooled: float
    train_concat: float
    train_pooled: float
    num_train_quadrants: int
    num_eval_quadrants: int


@dataclass(frozen=True)
class TowerReport:
    probe_before: ProbeResult | None  # None when probing was switched off
    probe_after: ProbeResult | None
    pretrain_steps: int
    final_loss: float | None
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def build_image_processor() -> CLIPImageProcessorPil:
    """CLIP preprocessing at 64 px: resize shortest side to 64, centre-crop 64, CLIP mean/std.

    The PIL backend is constructed explicitly because the torchvision backend is not installed; the
    saved ``preprocessor_config.json`` still names ``CLIPImageProcessor``, so either backend loads it.
    """
    side = digits.IMAGE_SIZE
    return CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def normalize_grey(batch: np.ndarray) -> torch.Tensor:
    """Grey ``(B, 64, 64)`` uint8 images to CLIP ``pixel_values`` ``(B, 3, 64, 64)``.

    Equal to the image processor's output for 64x64 inputs (no resize or crop happens at that size;
    the tests check the equality) but vectorised, which matters when rendering fresh batches for
    every pretraining step.
    """
    x = torch.from_numpy(np.ascontiguousarray(batch)).float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def build_vision_tower(seed: int) -> CLIPVisionModel:
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(**VISION_CONFIG))


def quadrant_tokens(patch_features: torch.Tensor) -> torch.Tensor:
    """``(B, 64, D)`` patch tokens in raster order to ``(B, 4, 16, D)``: the 4x4 block under each cell."""
    b, n, d = patch_features.shape
    side = int(round(n**0.5))
    per = side // digits.GRID_SIDE
    x = patch_features.reshape(b, digits.GRID_SIDE, per, digits.GRID_SIDE, per, d)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, digits.NUM_CELLS, per * per, d)


@torch.no_grad()
def penultimate_patches(model: CLIPVisionModel, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The features LLaVA feeds its projector: ``hidden_states[-2]`` without the CLS token."""
    model.eval()
    chunks = [
        model(pixel_values=pixel_values[i : i + batch_size], output_hidden_states=True).hidden_states[SELECT_LAYER][
            :, 1:
        ]
        for i in range(0, pixel_values.shape[0], batch_size)
    ]
    return torch.cat(chunks)


def _penultimate_with_grad(model: CLIPVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
    # Same features as penultimate_patches, but the last encoder layer (which LLaVA never reads) is
    # skipped, which saves a third of the compute per pretraining step.
    h = model.pre_layrnorm(model.embeddings(pixel_values))
    for layer in model.encoder.layers[: len(model.encoder.layers) + SELECT_LAYER + 1]:
        h = layer(h, None)
        if isinstance(h, tuple):
            h = h[0]
    return h[:, 1:]


def _render_probe_set(
    pool: digits.DigitPool, num_grids: int, rng: np.random.Generator
) -> tuple[torch.Tensor, np.ndarray]:
    grids = [digits.sample_grid(pool, rng) for _ in range(num_grids)]
    sources = np.array([g.sources for g in grids])
    labels = np.array([g.labels for g in grids])
    return normalize_grey(digits.render_array(sources)), labels


def linear_probe(
    model: CLIPVisionModel,
    train: tuple[torch.Tensor, np.ndarray],
    held_out: tuple[torch.Tensor, np.ndarray],
) -> ProbeResult:
    """Fit logistic-regression probes on ``train`` grids, score them on ``held_out`` grids."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats_tr = quadrant_tokens(penultimate_patches(model, train[0]))
    feats_ev = quadrant_tokens(penultimate_patches(model, held_out[0]))
    y_tr, y_ev = train[1].reshape(-1), held_out[1].reshape(-1)
    scores: dict[str, tuple[float, float]] = {}
    for name, f_tr, f_ev in (
        ("concat", feats_tr.flatten(2), feats_ev.flatten(2)),
        ("pooled", feats_tr.mean(2), feats_ev.mean(2)),
    ):
        x_tr = f_tr.reshape(y_tr.size, -1).numpy()
        x_ev = f_ev.reshape(y_ev.size, -1).numpy()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
        probe.fit(x_tr, y_tr)
        scores[name] = (float(probe.score(x_ev, y_ev)), float(probe.score(x_tr, y_tr)))
    return ProbeResult(
        concat=scores["concat"][0],
        pooled=scores["pooled"][0],
        train_concat=scores["concat"][1],
        train_pooled=scores["pooled"][1],
        num_train_quadrants=int(y_tr.size),
        num_eval_quadrants=int(y_ev.size),
    )


def pretrain_vision_tower(
    model: CLIPVisionModel,
    pool: digits.DigitPool,
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    max_shift: int = 2,
    patch_loss: float = 0.5,
    progress: bool = True,
) -> float:
    """Train the tower to name each quadrant's digit from its penultimate patch tokens.

    A stand-in for CLIP's pretraining: afterwards the tokens under a cell say which digit is there.
    One linear head classifies the mean of the cell's 16 tokens and, weighted by ``patch_loss``, each
    token on its own; the per-token term gives 16x more signal per image and makes single tokens
    informative, which is what the projector sees (at 300 steps it lifts the pooled probe from about
    0.90 to 0.96). Every step renders fresh grids from the train pool, each digit shifted by up to
    ``max_shift`` pixels so the ~1,250 training scans are not memorised. The head is thrown away.
    Returns the last step's loss.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 202])
    head = nn.Linear(model.config.hidden_size, digits.NUM_CLASSES)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)

    # Guard: the fast path must give exactly the features LLaVA will read.
    check = normalize_grey(digits.render_array(np.array([digits.sample_grid(pool, rng).sources])))
    with torch.no_grad():
        if not torch.allclose(
            _penultimate_with_grad(model.eval(), check), penultimate_patches(model, check), atol=1e-5
        ):
            raise RuntimeError("truncated CLIP forward disagrees with hidden_states[-2]; transformers changed")

    model.train()
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(steps), desc="pretrain clip-tiny", disable=not progress, leave=False):
        labels, sources = digits.sample_grid_batch(pool, rng, batch_size)
        pixels = normalize_grey(digits.render_array(sources, max_shift=max_shift, rng=rng))
        target = torch.from_numpy(labels)
        tokens = quadrant_tokens(_penultimate_with_grad(model, pixels))  # (B, 4, 16, D)
        loss = nn.functional.cross_entropy(head(tokens.mean(2)).flatten(0, 1), target.flatten())
        if patch_loss:
            per_patch = head(tokens).flatten(0, 2)
            loss = loss + patch_loss * nn.functional.cross_entropy(per_patch, target.repeat_interleave(tokens.shape[2]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return float(loss.item())


def build_clip_tiny(
    out_dir: str | Path,
    pools: dict[str, digits.DigitPool],
    seed: int = 0,
    pretrain_steps: int = 300,
    probe_train_grids: int = 1000,
    probe_eval_grids: int = 500,
    threshold: float = PROBE_THRESHOLD,
    probe: bool = True,
    progress: bool = True,
) -> TowerReport:
    """Build, measure, (if needed) pretrain, re-measure and save the tiny CLIP tower + processor.

    ``pretrain_steps=0`` keeps the random tower whatever the probe says; ``probe=False`` skips the
    measurements (seconds of logistic regression, too slow for unit tests) and pretrains whenever
    ``pretrain_steps > 0``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    model = build_vision_tower(seed)
    before = after = None
    if probe:
        rng = np.random.default_rng([seed, 303])
        probe_train = _render_probe_set(pools["train"], probe_train_grids, rng)
        probe_eval = _render_probe_set(pools["eval"], probe_eval_grids, rng)
        before = linear_probe(model, probe_train, probe_eval)
        logger.info(
            "clip-tiny random init: probe concat %.3f, pooled %.3f (held-out scans)", before.concat, before.pooled
        )
    loss: float | None = None
    steps = pretrain_steps if before is None or before.pooled < threshold else 0
    if steps:
        if before is not None:
            logger.info("pooled probe %.3f < %.2f: pretraining the tower for %d steps", before.pooled, threshold, steps)
        loss = pretrain_vision_tower(model, pools["train"], steps=steps, seed=seed, progress=progress)
        if probe:
            after = linear_probe(model, probe_train, probe_eval)
            logger.info(
                "clip-tiny pretrained: probe concat %.3f, pooled %.3f; last loss %.3f", after.concat, after.pooled, loss
            )

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    build_image_processor().save_pretrained(out_dir)
    return TowerReport(before, after, steps, loss, time.perf_counter() - start)


def build_llama_tiny(out_dir: str | Path, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    """A random 8-layer Llama sized to ``tokenizer``, saved next to the tokenizer files.

    It stands in for Vicuna: stage 2 trains the whole LLM, so the demo does not need a pretrained one.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **LLM_CONFIG,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    logger.info(
        "llama-tiny: %.2fM parameters, vocab %d", sum(p.numel() for p in model.parameters()) / 1e6, len(tokenizer)
    )
    return model
