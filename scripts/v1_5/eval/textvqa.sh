#!/bin/bash
# TextVQA val (with OCR tokens in the prompt), as upstream LLaVA's scripts/v1_5/eval/textvqa.sh. Settings: _env.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

"$PYTHON" -m llava.eval.model_vqa_loader \
    "${MODEL_ARGS[@]}" \
    --question-file "$EVAL_DIR/textvqa/llava_textvqa_val_v051_ocr.jsonl" \
    --image-folder "$EVAL_DIR/textvqa/train_images" \
    --answers-file "$EVAL_DIR/textvqa/answers/$CKPT.jsonl" \
    "${LOADER_ARGS[@]}"

"$PYTHON" -m llava.eval.eval_textvqa \
    --annotation-file "$EVAL_DIR/textvqa/TextVQA_0.5.1_val.json" \
    --result-file "$EVAL_DIR/textvqa/answers/$CKPT.jsonl"
