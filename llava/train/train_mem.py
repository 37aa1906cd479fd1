"""Upstream LLaVA's training entry point, as its scripts start it: ``deepspeed llava/train/train_mem.py --deepspeed
./scripts/zero3.json --model_name_or_path ... --version v1 ...`` (scripts/v1_5/*.sh).

It runs our trainer (``llava.train.train``) with the same flags. Upstream's ``train_mem`` differed from ``train``
only by asking for flash-attention 2; here both pick it whenever flash-attn is installed and a GPU is present
(``--attn_implementation`` chooses explicitly).
"""

from llava.train.train import main

if __name__ == "__main__":
    main()
