"""The web page's sign-in with the console's login link (see :mod:`..login`): ``POST /api/login`` exchanges the
link's one-time token for a session cookie, ``GET /api/session`` gives that session the local key,
``DELETE /api/session`` signs out."""

from __future__ import annotations

import time

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ...contract.errors import ErrorType
from ..context import get_ctx
from ..errors import error_response
from ..login import SESSION_COOKIE, SESSION_TTL_S, new_session, read_link_token, valid_session

router = APIRouter(tags=["web page"])
_NO_STORE = {"Cache-Control": "no-store"}


class LoginRequest(BaseModel):
    token: str = Field(max_length=512, description="the token of the login link the server printed")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or get_ctx(request).settings.base_url.startswith("https://")


@router.post("/api/login", status_code=204, summary="Exchange a login link's one-time token for a session cookie")
async def login(request: Request, body: LoginRequest) -> Response:
    ctx = get_ctx(request)
    now = time.time()
    link = read_link_token(ctx.token_secret, body.token, now)
    if ctx.keys.local_key is None or link is None or not await to_thread.run_sync(ctx.store.use_token_once, *link):
        return error_response(ErrorType.INVALID_LOGIN_LINK, "This login link is not valid (expired, already used, or "
                              "not this server's); run `photomaker login-link` on the server for a fresh one", _NO_STORE)
    response = Response(status_code=204, headers=_NO_STORE)
    response.set_cookie(SESSION_COOKIE, new_session(ctx.token_secret, now), max_age=SESSION_TTL_S, path="/",
                        httponly=True, samesite="strict", secure=_secure(request))
    return response


@router.get("/api/session", summary="The local key, for a page signed in with the login link")
def session(request: Request) -> JSONResponse:
    ctx = get_ctx(request)
    if ctx.keys.local_key is None or not valid_session(ctx.token_secret, request.cookies.get(SESSION_COOKIE),
                                                       time.time()):
        return error_response(ErrorType.UNAUTHORIZED, "Not signed in: open the login link the server printed, or type "
                              "your key", _NO_STORE)
    return JSONResponse({"key": ctx.keys.local_key}, headers=_NO_STORE)


@router.delete("/api/session", status_code=204, summary="Sign this browser out")
def logout(request: Request) -> Response:
    response = Response(status_code=204, headers=_NO_STORE)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response
