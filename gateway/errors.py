"""HTTP errors as JSON: every 4xx/5xx says what was wrong and how to fix it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from foundry import codec
from foundry.errors import BrokerUnavailable, CacheUnavailable, QueueFull

log = logging.getLogger(__name__)


class ApiError(web.HTTPException):
    """An error response with a JSON body ``{"error", "message", "field"?, ...}``."""

    # positional-only, so the body may carry a "status" of its own (a task's, say)
    def __init__(self, status: int, code: str, message: str, /, **extra: object) -> None:
        self.status_code = status
        self.code, self.detail, self.extra = code, message, extra
        body = {"error": code, "message": message, **extra}
        super().__init__(text=codec.dumps(body).decode(), content_type="application/json")

    def with_headers(self, headers: Mapping[str, str]) -> ApiError:
        self.headers.update(headers)
        return self


def bad_request(message: str, field: str | None = None, **extra: object) -> ApiError:
    if field is not None:
        extra["field"] = field
    return ApiError(400, "bad_request", message, **extra)


def unavailable(what: str, detail: str) -> ApiError:
    return ApiError(503, f"{what}_unavailable", f"{detail}; retry once it is back", service=what)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into JSON: a full queue into 429, broker/cache outages into 503s,
    never a trace."""
    try:
        return await handler(request)
    except ApiError:
        raise
    except web.HTTPRequestEntityTooLarge:
        from gateway.keys import SETTINGS

        limit = request.app[SETTINGS].max_task_bytes
        raise ApiError(
            413,
            "payload_too_large",
            f"request body is over the {limit} byte limit (FOUNDRY_MAX_TASK_BYTES); "
            "send a smaller task or raise the limit",
        ) from None
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        # Allow (405) tells the caller which methods the path takes: keep it.
        keep = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        code = exc.reason.lower().replace(" ", "_")
        raise ApiError(exc.status_code, code, _explain(exc)).with_headers(keep) from None
    except QueueFull as exc:
        raise ApiError(429, "queue_full", str(exc), agent_type=exc.agent_type) from None
    except BrokerUnavailable as exc:
        raise unavailable("nats", str(exc)) from None
    except CacheUnavailable as exc:
        raise unavailable("redis", str(exc)) from None
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        raise ApiError(500, "internal_error", "unexpected error; see the gateway log") from None


def _explain(exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{exc.method} is not allowed here; this path takes {allowed}"
    if isinstance(exc, web.HTTPNotFound):
        return "no such route; the routes are listed in GET /api/openapi.json"
    return exc.reason
