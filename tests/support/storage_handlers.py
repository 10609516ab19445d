"""The storage acceptance run's handler: `pgmq-worker run --burst --import tests.support.storage_handlers`.

The payload's `kind` picks what it hands the worker to store; `good` is a plain result.
"""

from __future__ import annotations

from typing import Any

from worker import Context, handler

QUEUE = "stored_cli"


@handler(QUEUE, max_attempts=3)
async def store(payload: dict[str, Any], ctx: Context) -> Any:
    """Return, report or step out the value named by payload["kind"]."""
    kind = payload["kind"]
    if kind == "nul_result":
        return {"text": "scanned\x00page"}
    if kind == "bytes_result":
        return {"blob": b"\x00\x01"}
    if kind == "nan_result":
        return {"score": float("nan")}
    if kind == "bad_step":
        await ctx.progress(50, step="ocr\x00")
    if kind == "bad_detail":
        await ctx.progress(50, detail={"pages": [{"text": "a\x00"}]})
    if kind == "bad_output":
        await ctx.step("ocr", lambda: {"pages": [{}, {}, {}, {"text": "x\x00"}]})
    return {"n": payload["n"], "ok": True}
