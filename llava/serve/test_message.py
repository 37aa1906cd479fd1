"""Upstream LLaVA's smoke test of a running demo: send one text message to a worker and print the streamed answer.

    python -m llava.serve.test_message --controller-address http://localhost:10000 --model-name CKPT \\
        [--message "Tell me a story"] [--max-new-tokens 32]
    python -m llava.serve.test_message --worker-address http://localhost:40000 --model-name CKPT

Through the controller it first refreshes the workers and prints the models they serve, then asks for a worker of
``--model-name``. The prompt is ``default_conversation`` with the message and the assistant's turn. Exit status
0 when an answer came, 1 with the reason otherwise (upstream's printed nothing and returned 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.conversation import default_conversation
from llava.serve.controller_client import ControllerClient, ServingError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.serve.test_message", description=__doc__.split("\n\n")[0])
    p.add_argument("--controller-address", type=str, default="http://localhost:21001")
    p.add_argument("--worker-address", type=str, default=None, help="skip the controller and ask this worker")
    p.add_argument("--model-name", type=str, default="facebook/opt-350m")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--message", type=str, default="Tell me a story with more than 1000 words.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = ControllerClient(args.controller_address)
    try:
        if args.worker_address:
            worker = args.worker_address
        else:
            models = client.list_models(refresh=True)
            print(f"Models: {models}")
            worker = client.worker_address(args.model_name)
            print(f"worker_addr: {worker}")
        conv = default_conversation.copy()
        conv.append_message(conv.roles[0], args.message)
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        payload = {"model": args.model_name, "prompt": prompt, "max_new_tokens": args.max_new_tokens,
                   "temperature": 0.7, "stop": conv.sep2}
        print(prompt, end="", flush=True)
        answer = ""
        for event in client.stream(worker, payload, require_report=False):
            print(event.text[len(answer):], end="", flush=True)  # the answer grows: print what is new
            answer = event.text if event.text.startswith(answer) else answer
        print()
    except ServingError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
