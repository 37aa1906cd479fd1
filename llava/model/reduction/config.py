"""Typed, validated token-reduction schedules (HiDrop and the baselines), saved in the checkpoint's config.json.

Layer numbering is 1-based, layers 1..L. Vision tokens are present on layers [inject_layer, exit_layer - 1].
Pruning "at layer l" happens after layer l runs, takes effect from layer l + 1, and is scored with layer l + 1's
attention projections. ``exit_layer = L + 1`` means vision never leaves; ``inject_layer = 1`` means vision is
present from the first layer, as in plain LLaVA.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

TopKMode = Literal["hard", "diff"]
ScoreQuery = Literal["last_nround", "last_1round", "all_text"]
ScoreWeight = Literal["none", "l2"]
ScoreLayer = Literal["next", "same", "twig"]
PositionScheme = Literal["persistent", "compacted", "group"]
Selection = Literal["topk", "dual_attention"]
KVPolicy = Literal["stage", "final"]
CompressVisibility = Literal["code", "paper"]

# The allowed values of every string field, checked when a config is built.
CHOICES: dict[str, tuple[str, ...]] = {
    "topk": ("hard", "diff"),
    "score_query": ("last_nround", "last_1round", "all_text"),
    "score_weight": ("none", "l2"),
    "score_layer": ("next", "same", "twig"),
    "position_scheme": ("persistent", "compacted", "group"),
    "selection": ("topk", "dual_attention"),
    "kv_policy": ("stage", "final"),
    "compress_visibility": ("code", "paper"),
}

# How a realised or scheduled average counts the vision tokens of a prune layer (docs/Baselines.md, "Counting vision
# tokens"): "entering" counts what every layer computes with, so a prune layer counts its candidates (this
# project's averages, the paper's Tables 1 and 2); "after_filter" counts a prune layer's survivors (MustDrop's
# released counter, which appends each filter layer's count after its filter).
CountConvention = Literal["entering", "after_filter"]
COUNT_CONVENTIONS: tuple[str, ...] = ("entering", "after_filter")

# Sentinel for "the last layer + 1" so presets can be written without knowing the depth.
NO_EXIT = -1


class ReductionConfigError(ValueError):
    """A schedule that cannot run; the message names the offending field."""


@dataclass(frozen=True)
class ReductionConfig:
    """A vision-token schedule for the decoder loop.

    ``keep_counts[s]`` is the number of vision tokens kept after pruning at ``prune_layers[s]``.
    """

    name: str = "off"
    inject_layer: int = 1
    prune_layers: tuple[int, ...] = ()
    keep_counts: tuple[int, ...] = ()
    exit_layer: int = NO_EXIT  # NO_EXIT: resolved to num_layers + 1
    topk: TopKMode = "diff"
    learn_threshold: bool = False  # learn DTop-K's `a` per stage (see docs/HiDrop.md, "Learned thresholds")
    budget_weight: float = 1.0  # weight of the budget term when learn_threshold is on
    score_temperature: float = 1.0  # tau multiplier of the soft rank used only in the backward of topk="diff"
    # Token scoring (paper, Tables 4 and 9; docs/HiDrop.md "Scoring"):
    score_query: ScoreQuery = "last_nround"  # query rows: the token before every answer span / the first / all text
    score_weight: ScoreWeight = "none"  # "l2": each key's attention times the L2 norm of its value vector, per head
    score_layer: ScoreLayer = "next"  # "next": layer l + 1's projections (HiDrop); "same": layer l's own (FastV, PDrop);
    # "twig": the last layer of the model's twig run on layer l's output (TwigVLM; llava.model.twig)
    # RoPE positions across inject / prune / exit (paper, Tables 5 and 10; docs/HiDrop.md "Positions"):
    position_scheme: PositionScheme = "persistent"
    # How a stage chooses (docs/Baselines.md): "topk" keeps exactly keep_counts[s]; "dual_attention" (MustDrop)
    # drops a vision token when its summed attention over the text queries is below global_thr of the total and
    # its largest single attention is below individual_thr, so the count differs per sample (keep_counts empty).
    selection: Selection = "topk"
    global_thr: float = 0.0
    individual_thr: float = 0.0
    # MustDrop's vision-encoding stage (llava.model.vision_merge): 3x3 windows of the patch grid whose tokens are
    # alike (mean pairwise cosine >= merge_threshold) become one token after the tower's first layer, and the
    # key_ratio share of patches with the most CLS attention is a key set that no later stage drops.
    local_merge: bool = False
    merge_threshold: float = 0.8
    merge_window: int = 3
    key_ratio: float = 0.0
    # Decoding cache: "stage" (each layer keeps its stage's tokens) or "final" (MustDrop's output-aware policy:
    # after prefill, layers from the first to the last prune layer keep only the tokens that survive every stage).
    kv_policy: KVPolicy = "stage"
    # VoCo-LLaMA (docs/Baselines.md, "VoCo-LLaMA"): ``compress_tokens`` learned <voco> tokens follow the image
    # (0: none) and the text after them sees the image only through them, by the attention mask alone. Which keys
    # the rows after the last VoCo token may not see (``compress_visibility``): "code", the authors' released mask,
    # hides everything before the first VoCo token (BOS, the prompt before the image and the image); "paper", the
    # paper's Eq. 3, hides only the vision span. Generation keeps only the visible keys in the cache.
    compress_tokens: int = 0
    compress_visibility: CompressVisibility = "code"

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_layers", tuple(int(x) for x in self.prune_layers))
        object.__setattr__(self, "keep_counts", tuple(int(x) for x in self.keep_counts))
        for f in dataclasses.fields(self):
            if f.type != "float":
                continue
            value = getattr(self, f.name)
            # NaN passes every comparison below (nan < 0 is False), and inf divides to NaN later in training.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ReductionConfigError(f"{f.name} must be a finite number, got {value!r}")
            object.__setattr__(self, f.name, float(value))
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ReductionConfigError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.selection == "dual_attention":
            if self.keep_counts:
                raise ReductionConfigError(
                    f"keep_counts {list(self.keep_counts)} must be empty with selection='dual_attention': the "
                    "thresholds decide how many tokens each stage keeps"
                )
            if self.learn_threshold:
                raise ReductionConfigError("learn_threshold needs selection='topk' (dual_attention has no budget)")
        for name in ("global_thr", "individual_thr", "key_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ReductionConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not -1.0 <= self.merge_threshold <= 1.0:
            raise ReductionConfigError(f"merge_threshold is a cosine similarity in [-1, 1], got {self.merge_threshold}")
        if self.merge_window < 2:
            raise ReductionConfigError(f"merge_window must be >= 2, got {self.merge_window}")
        if self.score_layer == "twig" and (self.selection != "topk" or len(self.prune_layers) != 1):
            raise ReductionConfigError(
                "score_layer='twig' (TwigVLM's twig-guided pruning) cuts once, right after the twig's base layer, with "
                f"selection='topk'; got prune_layers {list(self.prune_layers)}, selection={self.selection!r}"
            )
        if self.kv_policy == "final" and not self.prune_layers:
            raise ReductionConfigError("kv_policy='final' needs prune_layers (it keeps the tokens that survive them)")
        if self.selection == "topk" and len(self.prune_layers) != len(self.keep_counts):
            raise ReductionConfigError(
                f"prune_layers has {len(self.prune_layers)} entries but keep_counts has {len(self.keep_counts)}; "
                "they must have the same length"
            )
        if self.inject_layer < 1:
            raise ReductionConfigError(f"inject_layer must be >= 1, got {self.inject_layer}")
        if self.prune_layers and self.prune_layers[0] < self.inject_layer:
            raise ReductionConfigError(
                f"prune_layers[0]={self.prune_layers[0]} is before inject_layer={self.inject_layer}; "
                "vision must be injected before it can be pruned"
            )
        for a, b in zip(self.prune_layers, self.prune_layers[1:]):
            if b <= a:
                raise ReductionConfigError(f"prune_layers must be strictly increasing, got {list(self.prune_layers)}")
        for a, b in zip(self.keep_counts, self.keep_counts[1:]):
            if b > a:
                raise ReductionConfigError(f"keep_counts must be non-increasing, got {list(self.keep_counts)}")
        if any(k < 0 for k in self.keep_counts):
            raise ReductionConfigError(f"keep_counts must be >= 0, got {list(self.keep_counts)}")
        if self.exit_layer != NO_EXIT:
            last = self.prune_layers[-1] if self.prune_layers else self.inject_layer - 1
            if self.exit_layer <= last:
                raise ReductionConfigError(
                    f"exit_layer={self.exit_layer} must be after the last prune layer / inject layer ({last})"
                )
        if self.budget_weight < 0:
            raise ReductionConfigError(f"budget_weight must be >= 0, got {self.budget_weight}")
        if self.score_temperature <= 0:
            raise ReductionConfigError(f"score_temperature must be > 0, got {self.score_temperature}")
        self._check_compression()

    def _check_compression(self) -> None:
        """VoCo compresses by the mask alone: every vision token stays in every layer, at its own position."""
        if isinstance(self.compress_tokens, bool) or not isinstance(self.compress_tokens, int):
            raise ReductionConfigError(f"compress_tokens must be a whole number, got {self.compress_tokens!r}")
        if self.compress_tokens < 0:
            raise ReductionConfigError(f"compress_tokens must be >= 0, got {self.compress_tokens}")
        if not self.compress_tokens:
            return
        conflicts = [
            (bool(self.prune_layers), f"prune_layers={list(self.prune_layers)} (VoCo prunes nothing: the text sees "
                                      "the image through the VoCo tokens, every vision token stays)"),
            (self.selection != "topk", f"selection={self.selection!r} (there is nothing to select)"),
            (self.inject_layer != 1, f"inject_layer={self.inject_layer} (the VoCo tokens read the image from layer 1)"),
            (self.exit_layer != NO_EXIT, f"exit_layer={self.exit_layer} (the VoCo tokens read the image in every layer)"),
            (self.position_scheme != "persistent",
             f"position_scheme={self.position_scheme!r} (VoCo keeps the full-sequence positions, as its authors)"),
            (self.local_merge or self.key_ratio > 0, "local_merge / key_ratio (MustDrop's vision stage)"),
            (self.learn_threshold, "learn_threshold (there are no stages)"),
            (self.kv_policy != "stage", f"kv_policy={self.kv_policy!r} (the cache keeps the visible keys)"),
        ]
        bad = [what for hit, what in conflicts if hit]
        if bad:
            raise ReductionConfigError(
                f"compress_tokens={self.compress_tokens} (VoCo-LLaMA) cannot be combined with " + "; ".join(bad))

    def validate_for(self, num_layers: int, num_vision_tokens: int) -> ReductionConfig:
        """Checks the depth- and width-dependent rules; returns self so it can be chained."""
        exit_layer = self.resolved_exit(num_layers)
        if not (1 <= self.inject_layer <= num_layers):
            raise ReductionConfigError(f"inject_layer={self.inject_layer} must be in [1, {num_layers}] (num_layers)")
        if not (exit_layer <= num_layers + 1):
            raise ReductionConfigError(f"exit_layer={exit_layer} must be <= num_layers + 1 = {num_layers + 1}")
        if exit_layer <= self.inject_layer:
            raise ReductionConfigError(f"exit_layer={exit_layer} must be > inject_layer={self.inject_layer}")
        # Without an exit the resolved exit_layer (num_layers + 1) is no layer of the schedule: name the depth.
        if self.prune_layers and self.exit_layer != NO_EXIT and self.prune_layers[-1] >= exit_layer:
            raise ReductionConfigError(
                f"prune layer {self.prune_layers[-1]} must be < exit_layer={exit_layer}: the scorer uses layer l + 1"
            )
        if self.prune_layers and self.prune_layers[-1] >= num_layers:
            no_exit = " (the schedule has no exit)" if self.exit_layer == NO_EXIT else ""
            raise ReductionConfigError(
                f"prune layer {self.prune_layers[-1]} must be < num_layers={num_layers}{no_exit}: the scorer uses "
                "layer l + 1"
            )
        if self.local_merge:
            patches = num_vision_tokens if math.isqrt(num_vision_tokens) ** 2 == num_vision_tokens else num_vision_tokens - 1
            side = math.isqrt(patches)
            if side * side != patches or side % self.merge_window:
                raise ReductionConfigError(
                    f"local_merge needs a square patch grid whose side is divisible by merge_window: {patches} patches "
                    f"(side {side}) with merge_window={self.merge_window}"
                )
        if any(k > num_vision_tokens for k in self.keep_counts):
            raise ReductionConfigError(
                f"keep_counts {list(self.keep_counts)} exceed the number of vision tokens ({num_vision_tokens})"
            )
        return self

    def resolved_exit(self, num_layers: int) -> int:
        return num_layers + 1 if self.exit_layer == NO_EXIT else self.exit_layer

    @property
    def data_dependent(self) -> bool:
        """True when the number of vision tokens depends on the image and text (MustDrop's thresholds and
        merging): the average is then realised per sample and reported by the runs, not computed here."""
        return self.selection == "dual_attention" or self.local_merge

    @property
    def is_off(self) -> bool:
        """True when the schedule is plain LLaVA (vision everywhere, nothing pruned, upstream's positions)."""
        return (self.inject_layer == 1 and not self.prune_layers and self.exit_layer == NO_EXIT
                and self.position_scheme != "group" and not self.compress_tokens)

    # ------------------------------------------------------------------ accounting
    def counts_per_layer(
        self,
        num_layers: int,
        num_vision_tokens: int,
        stage_counts: list[float] | None = None,
        convention: CountConvention = "entering",
    ) -> list[float]:
        """Vision tokens of each layer 1..L: present at its input (``entering``), or, for a prune layer, kept by it
        (``after_filter``, MustDrop's counter).

        ``stage_counts`` replaces ``keep_counts`` with counts a forward actually realised (e.g. soft expected counts).
        With VoCo tokens (``compress_tokens`` = N) every layer processes the image's tokens plus its N VoCo tokens;
        what the text sees is ``visible_counts_per_layer``.
        """
        if convention not in COUNT_CONVENTIONS:
            raise ReductionConfigError(f"count convention must be one of {list(COUNT_CONVENTIONS)}, got {convention!r}")
        exit_layer = self.resolved_exit(num_layers)
        if self.data_dependent and stage_counts is None:
            raise ReductionConfigError(
                f"schedule {self.name!r} keeps a data-dependent number of tokens; its average is realised per "
                "sample (see the runs' realised_avg_vision_tokens or `llava.eval.efficiency --run-info`)"
            )
        kept = self.keep_counts if stage_counts is None else stage_counts
        counts = []
        for layer in range(1, num_layers + 1):
            if layer < self.inject_layer or layer >= exit_layer:
                counts.append(0)
                continue
            n = num_vision_tokens + self.compress_tokens  # VoCo: every layer runs the image and its VoCo tokens
            for pl, k in zip(self.prune_layers, kept):
                if layer > pl or (layer == pl and convention == "after_filter"):
                    n = k
            counts.append(n)
        return counts

    def average_vision_tokens(
        self, num_layers: int, num_vision_tokens: int = 576, convention: CountConvention = "entering"
    ) -> float:
        """Mean over all L layers of each layer's vision tokens (``counts_per_layer``; by default at its input)."""
        return sum(self.counts_per_layer(num_layers, num_vision_tokens, convention=convention)) / num_layers

    def visible_counts_per_layer(self, num_layers: int, num_vision_tokens: int) -> list[float]:
        """Image tokens the text can attend to at each layer: the N VoCo tokens for VoCo schedules (the budget it is
        compared at), else the vision tokens present (``counts_per_layer``)."""
        if self.compress_tokens:
            return [float(self.compress_tokens)] * num_layers
        return self.counts_per_layer(num_layers, num_vision_tokens)

    def average_visible_tokens(self, num_layers: int, num_vision_tokens: int = 576) -> float:
        """Mean over all L layers of ``visible_counts_per_layer``."""
        return sum(self.visible_counts_per_layer(num_layers, num_vision_tokens)) / num_layers

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["prune_layers"] = list(self.prune_layers)
        d["keep_counts"] = list(self.keep_counts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReductionConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ReductionConfigError(f"unknown reduction field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str) -> ReductionConfig:
        if name not in PRESETS:
            raise ReductionConfigError(f"unknown reduction preset {name!r}; known presets: {sorted(PRESETS)}")
        return PRESETS[name]

    def with_overrides(self, overrides: dict[str, Any] | list[str] | None) -> ReductionConfig:
        """Applies single-field overrides, given as a dict or as ``key=value`` strings (values parsed, not eval'd)."""
        if not overrides:
            return self
        if isinstance(overrides, list):
            overrides = parse_overrides(overrides)
        d = self.to_dict()
        for key, value in overrides.items():
            if key not in d:
                raise ReductionConfigError(f"unknown reduction field {key!r}; known: {sorted(d)}")
            d[key] = value
        if "name" not in overrides:
            d["name"] = f"{self.name}+" + ",".join(f"{k}={_fmt(v)}" for k, v in overrides.items())
        return ReductionConfig.from_dict(d)

    def describe(self, num_layers: int, num_vision_tokens: int) -> str:
        if self.compress_tokens:
            return (
                f"reduction '{self.name}': VoCo-LLaMA, {self.compress_tokens} <voco> tokens after the image "
                f"({self.compress_visibility} visibility) -> the text sees {self.compress_tokens} image tokens; every "
                f"layer processes {num_vision_tokens} + {self.compress_tokens} during compression"
            )
        if self.data_dependent:
            return (
                f"reduction '{self.name}': inject={self.inject_layer} prune={list(self.prune_layers)} "
                f"selection={self.selection} (global_thr={self.global_thr}, individual_thr={self.individual_thr}) "
                f"local_merge={self.local_merge} key_ratio={self.key_ratio} kv_policy={self.kv_policy} "
                f"positions={self.position_scheme} -> average vision tokens data-dependent (realised per run)"
            )
        avg = self.average_vision_tokens(num_layers, num_vision_tokens)
        return (
            f"reduction '{self.name}': inject={self.inject_layer} prune={list(self.prune_layers)} "
            f"keep={list(self.keep_counts)} exit={self.resolved_exit(num_layers)} topk={self.topk} "
            f"scoring={self.score_query}/{self.score_weight}/{self.score_layer} positions={self.position_scheme} "
            f"-> average vision tokens {avg:.2f} of {num_vision_tokens} over {num_layers} layers"
        )


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(str(x) for x in v) + ")"
    return str(v)


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(ReductionConfig)}


def parse_overrides(items: list[str] | str) -> dict[str, Any]:
    """Parses ``["exit_layer=24", "keep_counts=215,10,5,1", "topk=hard"]`` into typed values.

    Accepts a single space-separated string too. Integers, tuples of integers, booleans and strings only:
    never evaluates the text.
    """
    if isinstance(items, str):
        items = items.split()
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ReductionConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in _FIELD_TYPES:
            raise ReductionConfigError(f"unknown reduction field {key!r}; known: {sorted(_FIELD_TYPES)}")
        raw = raw.strip()
        try:
            if key in ("prune_layers", "keep_counts"):
                raw = raw.strip("()[]")
                out[key] = tuple(int(x) for x in raw.split(",") if x.strip()) if raw else ()
            elif key in ("inject_layer", "exit_layer"):
                out[key] = int(raw)
            elif key in ("budget_weight", "score_temperature", "global_thr", "individual_thr", "merge_threshold",
                         "key_ratio"):
                out[key] = float(raw)
            elif key in ("merge_window", "compress_tokens"):
                out[key] = int(raw)
            elif key in CHOICES:
                if raw not in CHOICES[key]:
                    raise ValueError(f"expected one of {list(CHOICES[key])}")
                out[key] = raw
            elif key in ("learn_threshold", "local_merge"):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                out[key] = raw.lower() in ("true", "1")
            else:
                out[key] = raw
        except ValueError as e:
            raise ReductionConfigError(f"cannot parse override {item!r}: {e}") from None
    return out


def resolve_reduction(
    preset: str | None = None,
    overrides: dict[str, Any] | list[str] | str | None = None,
    base: ReductionConfig | dict | None = None,
) -> ReductionConfig:
    """preset (if given) replaces ``base``; then single-field overrides apply."""
    if preset:
        cfg = ReductionConfig.from_preset(preset)
    elif isinstance(base, dict):
        cfg = ReductionConfig.from_dict(base)
    elif base is not None:
        cfg = base
    else:
        cfg = PRESETS["off"]
    if isinstance(overrides, str):
        overrides = parse_overrides(overrides)
    return cfg.with_overrides(overrides)


def _mustdrop(name: str, global_thr: float, individual_thr: float) -> ReductionConfig:
    return ReductionConfig(
        name=name, prune_layers=(3, 7, 11, 15), selection="dual_attention", global_thr=global_thr,
        individual_thr=individual_thr, score_layer="same", score_query="all_text", position_scheme="compacted",
        local_merge=True, merge_threshold=0.8, merge_window=3, key_ratio=0.08, kv_policy="final", topk="hard",
    )


def _hidrop(name: str, prune: tuple[int, ...], keep: tuple[int, ...], inject: int = 9, exit_: int = 25) -> ReductionConfig:
    return ReductionConfig(name=name, inject_layer=inject, prune_layers=prune, keep_counts=keep, exit_layer=exit_)


PRESETS: dict[str, ReductionConfig] = {
    "off": ReductionConfig(name="off"),
    # The paper's 7B settings (Vicuna-7B, 32 layers, 576 vision tokens).
    "tok64": _hidrop("tok64", (10, 14, 16, 18), (215, 10, 5, 1)),
    "tok48": _hidrop("tok48", (10, 14, 16, 18), (87, 10, 5, 1)),
    "tok80": _hidrop("tok80", (10, 13, 16, 19), (453, 10, 5, 1)),
    # MobileLLaMA-2.7B (32 layers): inject 15, exit 28, filter layers 16,19,22,25 (paper, section 4.1).
    # Vision is present on layers 15..27 = 13 layers, so the counts must sum to 64 * 32 = 2048 over them:
    # 576 * 2 (layers 15-16) + k1 * 3 (17-19) + k2 * 3 (20-22) + k3 * 3 (23-25) + k4 * 2 (26-27) = 2048.
    # Keeping the 7B tail (k2, k3, k4) = (10, 5, 1) gives 3 * k1 = 2048 - 1152 - 30 - 15 - 2 = 849, k1 = 283.
    "mobilellama-tok64": _hidrop("mobilellama-tok64", (16, 19, 22, 25), (283, 10, 5, 1), inject=15, exit_=28),
    # Baselines expressed as schedules in the same loop.
    # Baselines as their authors run them (docs/Baselines.md). FastV: one cut after layer K = 2 by the attention of
    # the last token in layer K's own attention (score_layer="same"), exact hard top-k, persistent positions (its
    # in-place variant keeps the original position ids). PDrop: cuts after layers 8, 16, 24, each scored with the
    # next stage's first layer by the last instruction token, exact top-k, positions renumbered at every cut.
    # FastV's own default, K = 2 and R = 50%: keep 288 -> (576*2 + 288*30) / 32 = 306.
    "fastv-paper": ReductionConfig(name="fastv-paper", prune_layers=(2,), keep_counts=(288,), topk="hard",
                                   score_layer="same"),
    # FastV with R = 75% pruned: keep 144 after layer 2 -> (576*2 + 144*30) / 32 = 171.
    "fastv": ReductionConfig(name="fastv", prune_layers=(2,), keep_counts=(144,), topk="hard", score_layer="same"),
    # PDrop's own default, lambda = 0.5 at 8, 16, 24 -> (576*8 + 288*8 + 144*8 + 72*8) / 32 = 270. `pdrop` is the
    # same schedule under its older name.
    "pdrop-paper": ReductionConfig(name="pdrop-paper", prune_layers=(8, 16, 24), keep_counts=(288, 144, 72),
                                   topk="hard", position_scheme="compacted"),
    "pdrop": ReductionConfig(name="pdrop", prune_layers=(8, 16, 24), keep_counts=(288, 144, 72), topk="hard",
                             position_scheme="compacted"),
    # Table 1's training-free budgets (80 / 64 / 48 average tokens on Vicuna-7B, 576 vision tokens), solved by
    # `python -m llava.eval.efficiency --llm vicuna-7b --solve --target-avg T --prune-layers ...` (tested).
    # FastV: one cut after layer K = 2. Averages 80.06 / 64.12 / 48.19 (integers cannot do better).
    "fastv-80": ReductionConfig(name="fastv-80", prune_layers=(2,), keep_counts=(47,), topk="hard", score_layer="same"),
    "fastv-64": ReductionConfig(name="fastv-64", prune_layers=(2,), keep_counts=(30,), topk="hard", score_layer="same"),
    "fastv-48": ReductionConfig(name="fastv-48", prune_layers=(2,), keep_counts=(13,), topk="hard", score_layer="same"),
    # PDrop: layers 8, 16, 24 cannot go below 144 tokens, so the budgets use layers 2, 8, 16 with one ratio
    # lambda for every stage (the PDrop maintainers' suggestion for small budgets). Averages 80.0 / 64.06 / 48.06.
    "pdrop-80": ReductionConfig(name="pdrop-80", prune_layers=(2, 8, 16), keep_counts=(152, 40, 11), topk="hard",
                                position_scheme="compacted"),
    "pdrop-64": ReductionConfig(name="pdrop-64", prune_layers=(2, 8, 16), keep_counts=(111, 21, 4), topk="hard",
                                position_scheme="compacted"),
    "pdrop-48": ReductionConfig(name="pdrop-48", prune_layers=(2, 8, 16), keep_counts=(55, 5, 1), topk="hard",
                                position_scheme="compacted"),
    # MustDrop (training-free): local merging and a key set in the tower, dual-attention filtering after layers
    # 3, 7, 11 and 15 (its code's 0-based [2, 6, 10, 14], each layer's own attention from the text after the image),
    # positions renumbered as its sequence shrinks, and the output-aware decoding cache. The released thresholds
    # (global, individual) aim at 192, 128 and 64 retained tokens by MustDrop's own counter (each filter layer
    # counted after its filter: the "after_filter" convention); the realised average varies per image. The authors
    # released thresholds per benchmark: TextVQA's for all three budgets (used here for every benchmark without its
    # own) and VizWiz's for 64 (`mustdrop-64-vizwiz`, which `scripts/eval/vizwiz.sh` picks: BENCHMARK_PRESETS).
    **{
        name: _mustdrop(name, g, ind)
        for name, g, ind in (("mustdrop-192", 0.001, 0.001), ("mustdrop-128", 0.0012, 0.001),
                             ("mustdrop-64", 0.011, 0.01), ("mustdrop-64-vizwiz", 0.005, 0.001))
    },
    # The embedded demo: an 8-layer LLM with 64 vision tokens (2x2 grid of 8x8 patches per digit).
    # Vision on layers 2..6: 64 (layers 2-3), 32 (4-5), 16 (6) -> (64 * 2 + 32 * 2 + 16) / 8 = 26.0.
    "tiny": ReductionConfig(name="tiny", inject_layer=2, prune_layers=(3, 5), keep_counts=(32, 16), exit_layer=7),
    # TwigVLM (needs a model with a twig after layer 2: llava.model.twig): one cut after layer 2 ranked by the twig's
    # last-layer attention, hard top-k, persistent positions, every vision token gone before layer 25 (FinalWipe).
    # R = ceil((32 * budget - 2 * 576) / 22): 227 / 134 / 41 for TwigVLM's own 192 / 128 / 64 and 64 / 41 / 18 for
    # Table 1's 80 / 64 / 48 (averages 192.06 / 128.13 / 64.19 / 80.0 / 64.19 / 48.38). The scoring query is the
    # last prompt token, as the released code; `-alltext` variants average every text row, as the paper's Eq. 3.
    **{
        f"twigvlm-{budget}{tag}": ReductionConfig(
            name=f"twigvlm-{budget}{tag}", prune_layers=(2,), keep_counts=(keep,), exit_layer=25, topk="hard",
            score_layer="twig", **({"score_query": "all_text"} if tag else {}),
        )
        for budget, keep in ((192, 227), (128, 134), (64, 41), (80, 64), (48, 18))
        for tag in ("", "-alltext")
    },
    # TwigVLM on the 8-layer demo model (twig after layer 2, one layer): vision on layers 1-6, 64 tokens on layers 1-2
    # and R = ceil((8 * 26 - 2 * 64) / 4) = 20 on layers 3-6 -> (2 * 64 + 4 * 20) / 8 = 26.0, the demo's budget.
    "twigvlm-tiny": ReductionConfig(name="twigvlm-tiny", prune_layers=(2,), keep_counts=(20,), exit_layer=7,
                                    topk="hard", score_layer="twig"),
    # VoCo-LLaMA (trained: scripts/finetune.sh with REDUCTION=voco-*, 2 epochs, lr 2e-5 as its authors). `voco-2` is
    # the authors' released N = 2. For Table 1's budgets we read "80 / 64 / 48 tokens" as N VoCo tokens, the image
    # tokens the text sees (HiDrop does not say how it mapped them; docs/Baselines.md): the layers still process
    # all 576 vision tokens plus the N VoCo tokens while compressing.
    **{f"voco-{n}": ReductionConfig(name=f"voco-{n}", compress_tokens=n) for n in (80, 64, 48, 2)},
}


# Presets whose authors released other settings for a benchmark: (preset, benchmark) -> the preset the evaluation
# scripts run instead (`llava.eval.run_benchmark` swaps it in and logs it). Only released values are listed: the
# MustDrop authors' eval scripts set (global, individual) per benchmark, TextVQA's 192/128/64 and VizWiz's 64.
BENCHMARK_PRESETS: dict[tuple[str, str], str] = {
    ("mustdrop-64", "vizwiz"): "mustdrop-64-vizwiz",
}


def preset_for_benchmark(preset: str | None, bench: str) -> str | None:
    """The preset the evaluation of ``bench`` runs for ``preset`` (its released per-benchmark variant, if any)."""
    if not preset:
        return preset
    return BENCHMARK_PRESETS.get((preset, bench), preset)


__all__ = [
    "BENCHMARK_PRESETS",
    "COUNT_CONVENTIONS",
    "NO_EXIT",
    "PRESETS",
    "ReductionConfig",
    "ReductionConfigError",
    "parse_overrides",
    "preset_for_benchmark",
    "resolve_reduction",
]
