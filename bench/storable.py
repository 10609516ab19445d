"""The storage rule's cost per value, against the stdlib encoders it replaced; printed, never asserted.

    python bench/storable.py
    python bench/storable.py --rounds 20000

What the worker pays per job on the drain path: the result checked when the handler returns
(`worker.execute`), then the batch of results encoded for the ack (`worker.store.settles.ack_many`);
what `enqueue_batch` pays to encode 1,000 plain payloads. "before" is the code this replaced:
`json.JSONEncoder(allow_nan=False, default=str)` to check, `json.dumps(..., default=str)` to
encode (which let NUL, bytes-as-repr and naive str() datetimes through). Microseconds per call,
best of five.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from typing import Any

from db import storable

_OLD_CHECK = json.JSONEncoder(allow_nan=False, default=str)
_OLD_ENQUEUE = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _old_result(result: Any) -> str:
    if result is not None:
        _OLD_CHECK.encode(result)
    return json.dumps([result], separators=(",", ":"), default=str)


def _new_result(result: Any) -> str:
    checked = None if result is None else storable.jsonable(result)
    return storable.dumps([checked])


CASES: dict[str, Any] = {
    "result None": None,
    "result small dict": {"id": 7, "status": "ok", "words": 120},
    "result 40 words": {"text": "lorem ipsum " * 20, "top": [["lorem", 20], ["ipsum", 20]], "n": 40},
    "result non-ASCII": {"text": "Grüße aus 東京 " * 10, "lang": "de"},
}
BATCH = [{"image_id": i, "width": 512, "name": f"img-{i}"} for i in range(1000)]


def best(fn: Callable[[], object], rounds: int) -> float:
    """Microseconds per call, best of five timings."""
    return min(timeit.repeat(fn, number=rounds, repeat=5)) / rounds * 1e6


def main(argv: list[str] | None = None) -> None:
    """Print before/after microseconds per call for each case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=50_000, help="calls per timing (default 50000)")
    rounds = parser.parse_args(argv).rounds
    print(f"{'case':<32}{'before µs':>12}{'after µs':>12}{'ratio':>8}")
    for name, value in CASES.items():
        before = best(lambda v=value: _old_result(v), rounds)
        after = best(lambda v=value: _new_result(v), rounds)
        print(f"{name + ' (check + ack)':<32}{before:>12.2f}{after:>12.2f}{after / before:>8.2f}")
    n = max(1, rounds // 1000)
    before = best(lambda: _OLD_ENQUEUE.encode(BATCH), n)
    after = best(lambda: storable.dumps(BATCH), n)
    print(f"{'enqueue_batch 1000 dicts':<32}{before:>12.2f}{after:>12.2f}{after / before:>8.2f}")


if __name__ == "__main__":
    main()
