"""Routes whose requests skip FastAPI's parameter machinery: for the polls fal's clients send many times a second.

Why: FastAPI solves a route's declared parameters and dependencies anew for every request (the key check is a
dependency of a dependency of a security scheme); for a status poll answered from memory that was half of the
API's CPU per request. A :class:`DirectRoute` keeps the declared endpoint, so the OpenAPI schema, the API docs and
the security marking are exactly what they were, but hands each request to the endpoint's *direct* handler
(``@direct(handler)``): a coroutine taking the :class:`~starlette.requests.Request`, which reads its few inputs
itself (path parameters, one query flag, the key via :func:`..auth.caller_of`). Both must accept the same inputs;
the declared endpoint stays callable and is what the docs describe. Errors raised by the handler go through the
app's exception handlers like any route's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["DirectRoute", "direct"]

Handler = Callable[[Request], Awaitable[Response]]
F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "__photomaker_direct__"


def direct(handler: Handler) -> Callable[[F], F]:
    """Mark an endpoint: a :class:`DirectRoute` for it answers requests with ``handler``."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTRIBUTE, handler)
        return endpoint

    return mark


class DirectRoute(APIRoute):
    """An ``APIRoute`` that answers with its endpoint's direct handler (see the module docstring); an endpoint
    without one is handled as usual."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = getattr(self.endpoint, _ATTRIBUTE, None)
        return handler if handler is not None else super().get_route_handler()
