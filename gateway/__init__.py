"""The HTTP gateway: task API, cluster status, OpenAPI document."""

from __future__ import annotations

from gateway.app import create_app

__all__ = ["create_app"]
