"""Token ids, strings and serving timings shared by data preparation, the model, evaluation and serving.

The names are upstream LLaVA's, so code written against ``llava.constants`` imports unchanged.
"""

IGNORE_INDEX = -100  # label value that the loss skips
IMAGE_TOKEN_INDEX = -200  # placeholder id spliced out for the vision tokens; never reaches embed_tokens
DEFAULT_IMAGE_TOKEN = "<image>"
# LLaVA-1.5 uses none of these three (its config has mm_use_im_start_end / mm_use_im_patch_token False); the names
# exist for upstream code that imports them. A checkpoint that needs them is refused when it loads.
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
# run_llava: a query may mark where the image goes with this text (otherwise the image comes first).
IMAGE_PLACEHOLDER = "<image-placeholder>"

# Serving (llava.serve.controller / model_worker): a worker reports every WORKER_HEART_BEAT_INTERVAL seconds and the
# controller forgets a worker it has not heard from for CONTROLLER_HEART_BEAT_EXPIRATION seconds (upstream's values;
# both are command-line flags there).
CONTROLLER_HEART_BEAT_EXPIRATION = 30
WORKER_HEART_BEAT_INTERVAL = 15
LOGDIR = "."  # upstream's log folder constant; our servers log through `logging`
