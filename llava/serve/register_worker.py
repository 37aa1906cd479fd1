"""Register a running model worker with a controller by hand (upstream LLaVA's tool).

    python -m llava.serve.register_worker --controller-address http://localhost:10000 \\
        --worker-name http://localhost:40000 [--check-heart-beat]

The controller asks the worker for its status; the worker is registered only if it answers. With
``--check-heart-beat`` the controller drops it again once it stops sending heartbeats (a worker started with
``--no-register`` sends none). Exit status 0 when the controller registered it, 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.serve.register_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--controller-address", type=str, required=True)
    p.add_argument("--worker-name", type=str, required=True, help="the worker's URL")
    p.add_argument("--check-heart-beat", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import httpx

    args = build_parser().parse_args(argv)
    url = args.controller_address.rstrip("/") + "/register_worker"
    data = {"worker_name": args.worker_name.rstrip("/"), "check_heart_beat": args.check_heart_beat,
            "worker_status": None}
    try:
        r = httpx.post(url, json=data, timeout=30)
        r.raise_for_status()
        registered = bool(r.json().get("registered", False))
    except (httpx.HTTPError, ValueError) as e:
        print(f"error: the controller at {args.controller_address} did not answer ({e})", file=sys.stderr)
        return 1
    if not registered:
        print(f"error: the controller could not reach {args.worker_name} (POST /worker_get_status); is the worker "
              "running at that address?", file=sys.stderr)
        return 1
    print(f"registered {args.worker_name} with {args.controller_address}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
