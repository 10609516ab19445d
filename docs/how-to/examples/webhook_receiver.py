"""The receiving side of job webhooks: verify each delivery, drop repeats, act on the event."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook, WebhookVerificationError


def create_app(secret: str) -> FastAPI:
    """An app with `POST /hooks/jobs`; `secret` is the worker's PGMQ_WORKER_WEBHOOK_SECRET."""
    hook = Webhook(secret)
    seen: set[str] = set()  # webhook-ids handled; keep them in your database in production
    app = FastAPI()
    app.state.events = []  # what a real app would act on: here, a list the tests read

    @app.post("/hooks/jobs", status_code=204)
    async def job_changed(request: Request) -> Response:
        """Refuse what does not verify (400); acknowledge a repeat without acting on it twice."""
        try:
            # The raw bytes as sent: re-encoded JSON would not match the signature.
            event: dict[str, Any] = hook.verify(await request.body(), dict(request.headers))
        except WebhookVerificationError:
            return Response(status_code=400)
        delivery = request.headers["webhook-id"]  # the same on every try of one event
        if delivery not in seen:
            seen.add(delivery)
            app.state.events.append((event["type"], event["data"]["id"], event["data"]["status"]))
        return Response(status_code=204)

    return app
