"""One error shape for every HTTP answer that is not a success: ``{"code", "message"}``.

Without this, FastAPI answers its own errors (an unknown route, a wrong method, a malformed
request, an exception nobody expected) as ``{"detail": ...}`` or plain text, and a client has to
parse two shapes; an unexpected exception also must not reach the client as a traceback. Every
app geofleet serves (the admin API and the replication peer API) installs these handlers.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from geofleet.domain.errors import GeofleetError
from geofleet.domain.residency import WrongRegion


def error_response(error: GeofleetError) -> JSONResponse:
    """The response for a ``GeofleetError`` (with ``Retry-After`` when the error says when to retry,
    and ``regions`` when it names where to ask instead: ``WrongRegion``, 421)."""
    retry_after = getattr(error, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    body: dict[str, object] = {"code": error.status, "message": error.message}
    if isinstance(error, WrongRegion):
        body["regions"] = list(error.regions)
    return JSONResponse(body, status_code=error.status, headers=headers)


def install_error_shape(app: FastAPI) -> None:
    @app.exception_handler(GeofleetError)
    async def geofleet_error(_: Request, error: GeofleetError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        return JSONResponse({"code": 400, "message": f"invalid request: {problems}"}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404 and error.detail == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif error.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return JSONResponse({"code": error.status_code, "message": message}, status_code=error.status_code,
                            headers=error.headers)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        # Starlette logs the traceback (it re-raises after answering); the client gets no internals.
        return JSONResponse({"code": 500, "message": "internal error: the region logged the cause"},
                            status_code=500)
