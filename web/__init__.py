"""The thin web process: enqueue endpoints, job status, a live progress stream and a small page."""

from web.app import create_app

__all__ = ["create_app"]
