"""The web process's metrics: on a port of its own (never the app's), request counts by route
template, and every queue's gauges."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from db.connect import Target
from queues import pgmq
from queues.catalog import load_catalog
from tests.support.helpers import send
from tests.support.ports import free_port
from tests.support.scrape import scrape, value
from web import create_app
from web.metrics import with_metrics
from web.settings import WebSettings


def test_the_web_process_counts_requests_and_exports_queue_gauges_on_its_own_port(
    target: Target, conn: psycopg.Connection[Any]
) -> None:
    """Requests are counted by method, route template (a job id is no label) and status; the queue
    gauges cover every queue; /metrics is not on the app's own port; the port closes at shutdown."""
    send(conn, "w_backlog", {"a": 1}, {"a": 2}, {"a": 3})
    pgmq.send(conn, "w_backlog", {"a": 4}, delay_s=600)
    port = free_port()
    settings = WebSettings(
        web_metrics_port=port, web_metrics_host="127.0.0.1", web_metrics_queue_cache=timedelta(0)
    )
    app = with_metrics(
        create_app(target, settings=settings, catalog=load_catalog(["handlers"])), target, settings
    )
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get(f"/jobs/{uuid.uuid4()}").status_code == 404
        assert client.get("/healthz").status_code == 200
        assert client.post("/jobs/text_stats", json={"text": "x"}).status_code == 202  # web/submit_route.py
        assert client.post("/jobs/text_stats", json={"text": ""}).status_code == 422
        assert client.get("/metrics").status_code == 404  # the app's port shows no internals
        samples = scrape(port)
    requests = "pgmq_worker_web_requests_total"
    assert value(samples, requests, method="GET", route="/jobs/{job_id}", status="404") == 3
    assert value(samples, requests, method="GET", route="/healthz", status="200") == 1
    assert value(samples, requests, method="POST", route="/jobs/{queue}", status="202") == 1
    assert value(samples, requests, method="POST", route="/jobs/{queue}", status="422") == 1
    assert value(samples, requests, method="GET", route="unmatched", status="404") == 1
    assert value(samples, "pgmq_worker_queue_messages", queue="w_backlog", state="visible") == 3
    assert value(samples, "pgmq_worker_queue_messages", queue="w_backlog", state="invisible") == 1
    assert value(samples, "pgmq_worker_dead_letters", queue="w_backlog") == 0
    with pytest.raises(httpx.TransportError):
        scrape(port)


def test_without_the_setting_the_app_is_served_as_is(target: Target) -> None:
    """Unset, the web process serves no metrics anywhere: the app is not wrapped."""
    app = create_app(target, settings=WebSettings(), catalog=load_catalog(["handlers"]))
    assert with_metrics(app, target, WebSettings()) is app
