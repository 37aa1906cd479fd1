"""Token ids and strings shared by data preparation, the model and evaluation."""

IGNORE_INDEX = -100  # label value that the loss skips
IMAGE_TOKEN_INDEX = -200  # placeholder id spliced out for the vision tokens; never reaches embed_tokens
DEFAULT_IMAGE_TOKEN = "<image>"
