"""Gateway request metrics: latency by route, method and status, served on ``/metrics``.

The route itself is in the route table (``gateway.routes``) with the scope it needs.

The route label is the route's pattern (``/api/cluster/task/{task_id}``), never
the raw path, so task ids do not become label values; requests matching no
route share ``unmatched``.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client.aiohttp import make_aiohttp_handler

from foundry.rejections import REJECTIONS

REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
EXPOSITION: web.AppKey[Handler] = web.AppKey("metrics_exposition")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0)  # fmt: skip
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CLIENT_CLOSED = 499  # the client went away before the answer (nginx's convention)


class RequestMetrics:
    """The gateway's own series, in its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "foundry_gateway_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern, method and status.",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.in_progress = Gauge(
            "foundry_gateway_requests_in_progress", "HTTP requests being answered now (long-polls "
            "and live streams included).", registry=registry,
        )  # fmt: skip


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(metrics: RequestMetrics) -> Middleware:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        metrics.in_progress.inc()
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED
            raise
        finally:
            metrics.in_progress.dec()
            method = request.method if request.method in METHODS else "other"
            metrics.latency.labels(route_of(request), method, str(status)).observe(
                time.perf_counter() - started
            )

    return record


def setup_metrics(app: web.Application) -> CollectorRegistry:
    """Add the outermost middleware (it sees the final status); ``/metrics`` serves it."""
    # Process-wide: the *_created series would double the series count; nothing reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    registry.register(REJECTIONS)
    app.middlewares.insert(0, metrics_middleware(RequestMetrics(registry)))
    app[REGISTRY] = registry
    app[EXPOSITION] = make_aiohttp_handler(registry)
    return registry


async def metrics_view(request: web.Request) -> web.StreamResponse:
    """GET /metrics: this app's registry in the Prometheus text format."""
    return await request.app[EXPOSITION](request)
