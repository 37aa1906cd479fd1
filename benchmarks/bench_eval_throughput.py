"""The eval runner's throughput: questions per second at batch 1 (the scripts' default, the reference mode) and at
larger batches, on a checkpoint and benchmark questions, the batch sizes taking turns.

    python benchmarks/bench_eval_throughput.py --model-path checkpoints/demo-tiny \
        --question-file playground/demo/data/eval/gqa/llava_gqa_testdev_balanced.jsonl \
        --image-folder playground/demo/data/eval/gqa/data/images [--questions 64 --batches 1,8,16 --reps 3]

Answers are the runner's own (`LlavaBackend`, greedy, the benchmark's `max_new_tokens`); batched answers equal
batch-1 answers (tested), so the only difference is speed.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved, machine_line

from llava.eval.benchmarks import get_benchmark
from llava.eval.run_benchmark import LlavaBackend
from llava.model.builder import load_pretrained_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--bench", default="gqa")
    p.add_argument("--question-file", required=True)
    p.add_argument("--image-folder", default="")
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--batches", default="1,8,16")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--reduction", default=None, help="preset replacing the checkpoint's schedule")
    args = p.parse_args()
    adapter = get_benchmark(args.bench)
    questions = adapter.load_questions(args.question_file)[: args.questions]
    images = [adapter.load_image(q, args.image_folder) for q in questions]
    tokenizer, model, processor, _ = load_pretrained_model(args.model_path, reduction=args.reduction)
    backend = LlavaBackend(model, tokenizer, processor)
    texts = [q.text for q in questions]

    def run(batch: int) -> None:
        for start in range(0, len(texts), batch):
            backend.generate(texts[start : start + batch], images[start : start + batch], adapter.max_new_tokens)

    sizes = [int(b) for b in args.batches.split(",")]
    timings = interleaved({b: (lambda b=b: run(b)) for b in sizes}, args.reps, torch.cuda.is_available())
    print(f"machine: {machine_line('cuda' if torch.cuda.is_available() else 'cpu')}; {len(texts)} {args.bench} "
          f"questions, {args.reps} interleaved repetitions; schedule {model.config.reduction_config.name}")
    print("| batch size | questions/s (median) | seconds per pass [min-max] | vs batch 1 |")
    print("|---|---|---|---|")
    base = timings[sizes[0]].median
    for b in sizes:
        t = timings[b]
        print(f"| {b} | {len(texts) / t.median:.2f} | {t.fmt(1, 's')} | {base / t.median:.2f}x |")


if __name__ == "__main__":
    main()
