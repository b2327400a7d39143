"""Errors in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``: the exception routes raise, and
the handlers that turn it, request validation failures and unexpected faults into responses."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..data.errors import printable

logger = logging.getLogger("qoqmed.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_input"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_response(status: int, message: str, param: str | None = None, code: str = "invalid_input",
                   kind: str = "invalid_request_error", headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    """The one shape of every error the API sends; the message and field are made printable (they may quote what
    a client sent, lone surrogates included, which JSON as UTF-8 cannot carry)."""
    body = {"message": printable(message), "type": kind, "param": None if param is None else printable(param),
            "code": code, **extra}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


# Codes for the statuses the framework itself answers (unknown path, wrong method, unparsable body...).
_HTTP_CODES = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
               413: "body_too_large", 415: "unsupported_media_type"}


_MEMBER = re.compile(r"^(str|int|float|bool|[A-Z]\w*|.*\[.*|function-.*|constrained-.*|json-or-python.*)$")


def field_path(loc: tuple) -> str:
    """('body', 'images', 0, 'FilePart', 'data') -> 'images[0].data': the names pydantic adds for union members
    (and the tag it adds after a tagged-union index) are dropped, so the path reads like the request JSON."""
    out, skip_tag, after_union = "", False, False
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            skip_tag, after_union = after_union, False
            continue
        if skip_tag:
            skip_tag = False
            continue
        if _MEMBER.match(str(part)):
            after_union = after_union or "tagged-union" in str(part)
            continue
        out += f".{part}" if out else str(part)
    return out or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Validation errors -> 400 (malformed JSON) or 422 naming the field; APIError -> its status; anything else
    -> 500 with the traceback in the server log only."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        # With unions, pydantic reports one error per member; the deepest one is the one that explains the problem.
        errors = sorted(exc.errors(), key=lambda e: -len(e.get("loc", ())))
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "invalid"}
        if first.get("type") == "json_invalid":
            return error_response(400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}", "body",
                                  code="malformed_json")
        details = [{"param": printable(field_path(tuple(e["loc"]))), "message": printable(e["msg"])}
                   for e in errors[:20]]
        param = details[0]["param"]
        return error_response(422, f"{param}: {first['msg']}", param, code=first.get("type", "invalid"),
                              details=details)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        # 404 for an unknown path, 405 for a wrong method, 400 for a body the framework cannot parse: same shape.
        return error_response(exc.status_code, str(exc.detail), code=_HTTP_CODES.get(exc.status_code, "http_error"),
                              kind="server_error" if exc.status_code >= 500 else "invalid_request_error",
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, code=exc.code,
                              kind="server_error" if exc.status >= 500 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        # The traceback goes to the server log; the client learns only that the fault is on this side.
        logger.exception("request failed: %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log",
                              code="internal_error", kind="server_error")
