"""The CLI's calls to the gateway: JSON over HTTP with the API token, errors as one line."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from foundry.settings import Settings


def headers(settings: Settings) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if settings.api_token:
        headers["Authorization"] = f"Bearer {settings.api_token}"
    return headers


def gateway_call(
    settings: Settings,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    timeout: float = 10,
) -> Any:
    """``method`` on the gateway's ``path``, with the API token when there is one."""
    url = f"{settings.gateway_base_url}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers(settings))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("message", detail)
        except (ValueError, AttributeError):
            pass
        raise SystemExit(f"foundry: {exc.code} from the gateway: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(
            f"foundry: cannot reach the gateway at {url} ({exc}); is the cluster up (make up)?"
        ) from None
