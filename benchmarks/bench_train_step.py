"""The whole training step, `off` against `tok64`: vision tower, projector, language model, loss, backward and
optimizer step through the real trainer (`scripts/finetune.sh`, DeepSpeed ZeRO-2 and ZeRO-3, 2 CPU ranks over
gloo, or the GPUs), with the two schedules' runs interleaved (off, tok64, off, tok64, ...).

    python benchmarks/bench_train_step.py [--hidden 256 --text 160 --steps 6 --reps 2 --zero 2,3]

Each run trains `--steps` optimizer steps and the trainer logs `step_seconds`; a run's figure is the median over
its steps after the first (the first warms up), and each schedule's figure the median over its runs. Printed next
to two ideals from FLOPs (forward of the frozen tower, forward and backward (3x) of the projector and the language
model): the language model alone, and the Amdahl-style ideal that includes the tower's fixed cost. Then the same
ideal for the real shapes: CLIP ViT-L/14-336 (24 layers, d 1024, 577 tokens) and Vicuna-7B (32 layers, d 4096,
FFN 11008), next to the paper's 1.72x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import machine_line

REPO = Path(__file__).resolve().parents[1]
N_VISION = 576


def block_flops(n: float, d: int, m: int, ffn_mats: int) -> float:
    """One transformer block's multiply-adds for n tokens (the paper's convention: 4nd^2 + 2n^2 d + k n d m)."""
    return 4 * n * d * d + 2 * n * n * d + ffn_mats * n * d * m


def step_flops(counts: list[int], text: int, d: int, m: int, tower: tuple[int, int, int, int],
               backward: float = 2.0) -> tuple[float, float]:
    """(tower forward, projector + language model forward and backward) for one sample. ``backward`` is the
    backward's cost in forwards: 2 when the language model trains (activation and weight gradients), 1 when it
    is frozen and the gradient only passes through it to the projector (stage 1)."""
    t_layers, t_d, t_m, t_n = tower
    tower_fwd = t_layers * block_flops(t_n, t_d, t_m, 2)  # CLIP's MLP has two matrices; frozen, forward only
    projector = 3 * N_VISION * (t_d * d + d * d)
    llm = sum(block_flops(text + c, d, m, 3) for c in counts)  # SwiGLU: three matrices
    return tower_fwd, (1 + backward) * llm + projector


def ideals(text: int, d: int, m: int, layers: int, tower: tuple[int, int, int, int],
           backward: float = 2.0) -> tuple[float, float]:
    """(language-model-only ideal speedup, Amdahl ideal with the tower) of tok64 over off."""
    from llava.model import PRESETS

    off = PRESETS["off"].counts_per_layer(layers, N_VISION)
    tok = PRESETS["tok64"].counts_per_layer(layers, N_VISION)
    t_off, l_off = step_flops(off, text, d, m, tower, backward)
    t_tok, l_tok = step_flops(tok, text, d, m, tower, backward)
    return l_off / l_tok, (t_off + l_off) / (t_tok + l_tok)


def build_assets(root: Path, hidden: int, text: int, samples: int, tower: tuple[int, int, int, int]) -> dict[str, str]:
    """A 32-layer LLM of reduced width with a locally trained tokenizer, a CLIP tower at 336 px / 14 (576 patches),
    digit images and conversations of about ``text`` tokens."""
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from llava.conversation import get_template
    from llava.demo.tokenizer import train_tokenizer

    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    corpus = [get_template("vicuna_v1").system, "USER: ASSISTANT: </s> " + " ".join(words)] * 8
    tok = train_tokenizer(corpus, root / "llm", vocab_size=400)
    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 11008 / 4096),
                                 num_hidden_layers=32, num_attention_heads=heads, num_key_value_heads=heads,
                                 max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(root / "llm")
    t_layers, t_d, t_m, _ = tower
    CLIPVisionModel(CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=t_d, intermediate_size=t_m,
                                     num_hidden_layers=t_layers, num_attention_heads=max(1, t_d // 64))).save_pretrained(root / "clip")
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(root / "clip")
    digits = load_digits()
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    rng = np.random.default_rng(0)
    for i in range(samples):
        img = (digits.images[i] * 15).astype(np.uint8)
        Image.fromarray(np.kron(img, np.ones((42, 42), dtype=np.uint8))).convert("RGB").save(root / "images" / f"{i}.png")
        question = " ".join(rng.choice(words, size=text // 3))
        answer = " ".join(rng.choice(words, size=text // 3))
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]})
    (root / "data.json").write_text(json.dumps(records))
    return {"llm": str(root / "llm"), "clip": str(root / "clip"), "images": str(root / "images"),
            "data": str(root / "data.json")}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(assets: dict[str, str], reduction: str, zero: int, steps: int, out: Path, batch: int) -> list[float]:
    """One training run through scripts/finetune.sh; returns its step_seconds after the first step."""
    env = dict(os.environ, RECIPE="tiny", MODEL_BASE=assets["llm"], VISION_TOWER=assets["clip"], PROJECTOR="",
               DATA_PATH=assets["data"], IMAGE_FOLDER=assets["images"], OUTPUT_DIR=str(out), OVERWRITE="1",
               REDUCTION=reduction, REDUCTION_OVERRIDES="", MAX_STEPS=str(steps), SAVE_STEPS="100000",
               BATCH_PER_DEVICE=str(batch), MODEL_MAX_LENGTH="2048", DS_CONFIG=str(REPO / "scripts" / f"zero{zero}.json"),
               PYTHON=sys.executable, HF_HUB_OFFLINE="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"),
               MASTER_PORT=str(_free_port()))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "finetune.sh")], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training run failed ({reduction}, ZeRO-{zero}):\n{proc.stderr[-3000:]}")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["step_seconds"] for h in history if "step_seconds" in h]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--text", type=int, default=160, help="text tokens per sample (about)")
    p.add_argument("--tower", default="4,128,512", help="CLIP layers,hidden,ffn at 336 px / 14")
    p.add_argument("--batch", type=int, default=4, help="per rank")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--zero", default="2,3")
    p.add_argument("--keep", default=None, help="keep the synthetic assets and runs in this folder")
    args = p.parse_args()
    t_layers, t_d, t_m = (int(x) for x in args.tower.split(","))
    tower = (t_layers, t_d, t_m, N_VISION + 1)
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_train_"))
    assets = build_assets(root, args.hidden, args.text, samples=2 * args.batch * args.steps, tower=tower)
    m = int(args.hidden * 11008 / 4096)
    llm_ideal, amdahl = ideals(args.text, args.hidden, m, 32, tower)
    print(f"machine: {machine_line('cpu')}; {args.reps} interleaved runs per schedule, {args.steps} steps each")
    print(f"model: 32 layers, hidden {args.hidden}, FFN {m}; CLIP {t_layers} layers, hidden {t_d}, 577 tokens; "
          f"about {args.text} text tokens; batch {args.batch} per rank, 2 ranks")
    print("| ZeRO | off s/step | tok64 s/step | measured | LM-only ideal | ideal with tower | measured / ideal |")
    print("|---|---|---|---|---|---|---|")
    for zero in (int(z) for z in args.zero.split(",")):
        samples: dict[str, list[float]] = {"off": [], "tok64": []}
        for rep in range(args.reps):
            for name in samples:  # interleaved: off, tok64, off, tok64, ...
                steps = run(assets, name, zero, args.steps, root / f"z{zero}-{name}-{rep}", args.batch)
                samples[name].append(statistics.median(steps))
        off, tok = statistics.median(samples["off"]), statistics.median(samples["tok64"])
        print(f"| {zero} | {off:.3f} | {tok:.3f} | {off / tok:.2f}x | {llm_ideal:.2f}x | {amdahl:.2f}x | "
              f"{off / tok / amdahl:.2f} |")
    real_tower = (24, 1024, 4096, 577)
    print("\nIdeal for the real shapes (CLIP ViT-L/14-336 + Vicuna-7B, tok64 over off, one training step):")
    print("| stage | text tokens | LM-only ideal | ideal with tower |")
    print("|---|---|---|---|")
    for stage, text, backward in (("pretrain (captions; LM frozen)", 60, 1.0),
                                  ("finetune (conversations)", 250, 2.0), ("finetune, long", 1000, 2.0)):
        lm, am = ideals(text, 4096, 11008, 32, real_tower, backward)
        print(f"| {stage} | {text} | {lm:.2f}x | {am:.2f}x |")
    print("The paper reports 1.72x faster training (159.3 -> 94.4 GPU hours for pretraining and finetuning together).")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
