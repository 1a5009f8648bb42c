"""The ASGI application: FastAPI for the routes and their OpenAPI document, a lean hot path.

Every route is declared on a FastAPI app, which documents it (request and response schemas, every
4xx) and serves it. The prediction routes are also answered directly by `Api.__call__` without
going through FastAPI's routing and request machinery, which alone costs several times the
model's ~10 microseconds (see the benchmark): both ways call the same `predict_one` /
`predict_batch` methods, so they behave identically (the tests run both; `fast_path=False` turns
the shortcut off).

`Api.__call__` also does, for every request: the request id (X-Request-ID in, generated when
absent or unusable, echoed in the response), request metrics, and the JSON access log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from imdb_api import __version__
from imdb_api.logs import REQUEST_ID
from imdb_api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from imdb_api.metrics import Metrics
from imdb_api.model_state import ModelState
from imdb_api.schemas import (
    BatchPrediction,
    ErrorResponse,
    Health,
    ModelInfo,
    Prediction,
    Readiness,
)
from imdb_api.settings import Settings
from imdb_api.validation import InvalidRequestError, MovieValidator
from imdb_model import FeatureError

logger = logging.getLogger("imdb_api")
access_logger = logging.getLogger("imdb_api.access")

JSON: Final[bytes] = b"application/json"
# A client's request id is echoed only when it is short and made of safe characters; anything
# else (log injection, megabyte headers) gets a generated one.
_REQUEST_ID_OK: Final[re.Pattern[bytes]] = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_ROUTE_UNMATCHED: Final[str] = "unmatched"

ERROR_STATUS: Final[dict[str, int]] = {
    "invalid_json": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "validation_error": 422,
    "internal_error": 500,
    "not_ready": 503,
}
_HTTP_ERROR_KIND: Final[dict[int, str]] = {404: "not_found", 405: "method_not_allowed"}


@dataclass
class Reply:
    """A finished response: status, JSON (or other) body and extra headers."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    error: str | None = None


class ApiError(Exception):
    """A request that is answered with an error (see ERROR_STATUS for the codes)."""

    def __init__(self, kind: str, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.kind = kind
        self.detail = detail
        self.errors = errors
        super().__init__(detail)

    def reply(self) -> Reply:
        """The error as a JSON response."""
        payload: dict[str, Any] = {"error": self.kind, "detail": self.detail}
        if self.errors is not None:
            payload["errors"] = self.errors
        request_id = REQUEST_ID.get()
        if request_id is not None:
            payload["requestId"] = request_id
        headers = [(b"retry-after", b"5")] if self.kind == "not_ready" else []
        return Reply(ERROR_STATUS[self.kind], orjson.dumps(payload), JSON, headers, self.kind)


def _media_type_ok(value: bytes | None) -> bool:
    if value is None:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    return media == JSON or (media.startswith(b"application/") and media.endswith(b"+json"))


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The body is not valid JSON (NaN and Infinity are not JSON)",
        413: "The body is larger than the limit, or the batch has too many movies",
        415: "The Content-Type is not application/json",
        422: "The JSON does not describe valid movies; `errors` lists each problem",
        503: "The model is not ready (artifact missing, being verified or failed verification)",
    }
    return {s: {"model": ErrorResponse, "description": descriptions[s]} for s in statuses}


class Api:
    """The service as an ASGI application (see the module docstring)."""

    def __init__(self, settings: Settings, state: ModelState | None = None) -> None:
        self.settings = settings
        self.state = state or ModelState(
            settings.artifact, threads=settings.onnx_threads, release_file=settings.release_file
        )
        self.metrics = Metrics(self.state)
        self._validator = MovieValidator(self.state.schema, settings.max_string_length)
        self.fastapi = self._build_fastapi()
        self._fast: dict[
            tuple[str, str], Callable[[Receive, list[tuple[bytes, bytes]]], Awaitable[Reply]]
        ] = {}
        if settings.fast_path:
            self._fast[("POST", "/predict")] = self.predict_one
            self._fast[("POST", "/predict/batch")] = self.predict_batch
            if settings.benchmark_noop:
                self._fast[("POST", "/noop")] = self.noop
        self._routes = frozenset(
            route.path for route in self.fastapi.router.routes if hasattr(route, "path")
        )

    # ------------------------------------------------------------------ ASGI entry point

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.fastapi(scope, receive, send)  # lifespan
            return
        start = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        request_id: bytes | None = None
        for name, value in headers:
            if name == b"x-request-id":
                request_id = value
                break
        if request_id is None or not _REQUEST_ID_OK.fullmatch(request_id):
            request_id = os.urandom(8).hex().encode("ascii")
        token = REQUEST_ID.set(request_id.decode("ascii"))
        method: str = scope["method"]
        path: str = scope["path"]
        route = path if path in self._routes else _ROUTE_UNMATCHED
        status = 500
        error: str | None = None
        try:
            handler = self._fast.get((method, path))
            if handler is not None:
                reply = await self._run(handler, receive, headers)
                status, error = reply.status, reply.error
                await self._send(send, reply, request_id)
            else:
                status, error = await self._delegate(scope, receive, send, request_id)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(route, method, status, elapsed)
            if error is not None:
                self.metrics.observe_error(route, error)
            if self.settings.access_log:
                access_logger.info(
                    "request",
                    extra={
                        "method": method,
                        "path": path,
                        "status": status,
                        "duration_ms": round(elapsed * 1000.0, 3),
                    },
                )
            REQUEST_ID.reset(token)

    async def _run(
        self,
        handler: Callable[[Receive, list[tuple[bytes, bytes]]], Awaitable[Reply]],
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
    ) -> Reply:
        try:
            return await handler(receive, headers)
        except ApiError as exc:
            return exc.reply()
        except Exception:
            # A bug, never the client's fault: log it with the request id, answer a JSON 500.
            logger.exception("unhandled error")
            return ApiError("internal_error", "internal error; see the server log").reply()

    @staticmethod
    async def _send(send: Send, reply: Reply, request_id: bytes) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", reply.content_type),
                    (b"content-length", str(len(reply.body)).encode("ascii")),
                    (b"x-request-id", request_id),
                    *reply.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})

    async def _delegate(
        self, scope: Scope, receive: Receive, send: Send, request_id: bytes
    ) -> tuple[int, str | None]:
        """Let FastAPI answer; add the request id header and note the status."""
        seen: dict[str, Any] = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["started"] = True
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        try:
            await self.fastapi(scope, receive, send_with_id)
        except Exception:
            # FastAPI has logged nothing yet only when the error escaped its error middleware
            # after answering 500; log it here once, with the request id, and swallow it.
            logger.exception("unhandled error")
            if not seen["started"]:
                await self._send(
                    send, ApiError("internal_error", "internal error").reply(), request_id
                )
            return 500, "internal_error"
        status = int(seen["status"])
        kind = _HTTP_ERROR_KIND.get(status, "internal_error" if status >= 500 else None)
        if kind is None and status >= 400:
            kind = _ERROR_KIND_BY_STATUS.get(status)
        return status, kind

    # ------------------------------------------------------------------ request bodies

    async def _read_json(self, receive: Receive, headers: list[tuple[bytes, bytes]]) -> Any:
        """The request's JSON body, after the content type and size checks."""
        return _parse_json(await self._read_body(receive, headers))

    async def _read_body(self, receive: Receive, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The request's body, after the content type and size checks."""
        content_type: bytes | None = None
        length: bytes | None = None
        for name, value in headers:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        if not _media_type_ok(content_type):
            raise ApiError(
                "unsupported_media_type",
                (
                    f"Content-Type must be application/json, got {content_type!r}"
                    if content_type is not None
                    else "Content-Type must be application/json (none given)"
                ),
            )
        limit = self.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            # Refused from the header alone: the body is never read.
            raise ApiError("payload_too_large", f"the body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError("invalid_json", "the client disconnected before the body ended")
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError("payload_too_large", f"the body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _validator_now(self) -> MovieValidator:
        # The validator follows the served artifact's schema, which is known once it is loaded.
        if self._validator.schema is not self.state.schema:
            self._validator = MovieValidator(self.state.schema, self.settings.max_string_length)
        return self._validator

    def _require_ready(self) -> None:
        if not self.state.ready:
            raise ApiError("not_ready", "the model is not ready: " + "; ".join(self.state.reasons))

    # ------------------------------------------------------------------ handlers

    async def predict_one(self, receive: Receive, headers: list[tuple[bytes, bytes]]) -> Reply:
        """POST /predict: one movie in, its predicted rating out."""
        self._require_ready()
        body = await self._read_json(receive, headers)
        try:
            movie = self._validator_now().validate_one(body)
            predictor = self.state.predictor
            assert predictor is not None  # guaranteed by _require_ready  # noqa: S101
            rating = predictor.predict_one(movie)
        except InvalidRequestError as exc:
            raise ApiError("validation_error", str(exc), exc.errors) from None
        except FeatureError as exc:  # the shared transform's own checks, a second line
            raise ApiError("validation_error", str(exc), _feature_error(exc)) from None
        if self.settings.debug_delay_s:
            await asyncio.sleep(self.settings.debug_delay_s)
        self.metrics.observe_prediction(rating)
        return Reply(
            200, orjson.dumps({"averageRating": rating, "modelVersion": self.state.version})
        )

    async def predict_batch(self, receive: Receive, headers: list[tuple[bytes, bytes]]) -> Reply:
        """POST /predict/batch: up to `max_batch` movies in, their ratings out, in order."""
        self._require_ready()
        raw = await self._read_body(receive, headers)
        limit = self.settings.max_batch
        validator = self._validator_now()
        columns = validator.decode_columns(raw, limit)
        try:
            if columns is None:  # not a plain valid batch: parse and check it to say why
                body = _parse_json(raw)
                movies = body.get("movies") if type(body) is dict else None
                if type(movies) is list and len(movies) > limit:
                    raise ApiError(
                        "payload_too_large",
                        f"{len(movies)} movies in one batch; the limit is {limit}",
                    )
                columns = validator.validate_columns(body, limit)
            ratings = self._predict_columns(columns)
        except InvalidRequestError as exc:
            raise ApiError("validation_error", str(exc), exc.errors) from None
        except FeatureError as exc:
            raise ApiError("validation_error", str(exc), _feature_error(exc)) from None
        if self.settings.debug_delay_s:
            await asyncio.sleep(self.settings.debug_delay_s)
        self.metrics.observe_batch(ratings)
        return Reply(200, ratings_body(ratings, self.state.version))

    def _predict_columns(self, columns: dict[str, list[Any]]) -> Any:
        """Validated columns -> ratings through the trainer's columnar transform.

        The lists go in as they are: the transform checks and converts plain JSON values
        (numbers and null, booleans, strings, arrays of genre names) with numpy.
        """
        predictor = self.state.predictor
        assert predictor is not None  # noqa: S101
        if not columns["primaryTitle"]:
            return np.empty(0, dtype=np.float32)
        return predictor.predict_columns(columns)

    async def noop(self, receive: Receive, headers: list[tuple[bytes, bytes]]) -> Reply:
        """POST /noop (benchmark only): reads the body and answers a constant."""
        while (await receive()).get("more_body", False):
            pass
        return Reply(200, b'{"ok":true}')

    # ------------------------------------------------------------------ FastAPI routes

    def _build_fastapi(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            if self.settings.artifact is not None and not self.state.wait(0):
                self.state.load_in_background()
            yield

        app = FastAPI(
            title="IMDb rating model API",
            version=__version__,
            description="Predicts a movie's IMDb averageRating from its title.basics fields.",
            lifespan=lifespan,
        )

        async def as_response(
            handler: Callable[[Receive, list[tuple[bytes, bytes]]], Awaitable[Reply]],
            request: Request,
        ) -> Response:
            reply = await self._run(handler, request.receive, request.scope["headers"])
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reply.headers}
            return Response(
                reply.body, reply.status, headers, media_type=reply.content_type.decode("ascii")
            )

        @app.post(
            "/predict",
            response_model=Prediction,
            summary="Predict one movie's rating",
            responses=_error_responses(400, 413, 415, 422, 503),
            openapi_extra={"requestBody": _request_body("Movie")},
        )
        async def predict(request: Request) -> Response:
            return await as_response(self.predict_one, request)

        @app.post(
            "/predict/batch",
            response_model=BatchPrediction,
            summary="Predict the ratings of a batch of movies",
            description=f"At most {self.settings.max_batch} movies per request (more: 413).",
            responses=_error_responses(400, 413, 415, 422, 503),
            openapi_extra={"requestBody": _request_body("MovieBatch")},
        )
        async def predict_batch(request: Request) -> Response:
            return await as_response(self.predict_batch, request)

        if self.settings.benchmark_noop:

            @app.post(
                "/noop", summary="Benchmark only: does nothing", response_model=dict[str, bool]
            )
            async def noop(request: Request) -> Response:
                return await as_response(self.noop, request)

            @app.post(
                "/noop/fastapi",
                summary="Benchmark only: does nothing, the FastAPI way (the framework's ceiling)",
                response_model=dict[str, bool],
            )
            async def noop_fastapi() -> dict[str, bool]:
                return {"ok": True}

        @app.get("/health", response_model=Health, summary="Liveness: the process answers")
        async def health() -> Response:
            return Response(b'{"status":"ok"}', media_type="application/json")

        @app.get(
            "/ready",
            response_model=Readiness,
            summary="Readiness: the verified model serves predictions",
            responses={503: {"model": Readiness, "description": "Not ready, and why"}},
        )
        async def ready() -> Response:
            state = self.state
            payload = {
                "ready": state.ready,
                "status": state.status.value,
                "modelVersion": state.version or None,
                "reasons": state.reasons,
            }
            return Response(
                orjson.dumps(payload), 200 if state.ready else 503, media_type="application/json"
            )

        @app.get(
            "/model/info",
            response_model=ModelInfo,
            summary="The public part of the served artifact's manifest",
            responses=_error_responses(503),
        )
        async def model_info() -> Response:
            try:
                self._require_ready()
            except ApiError as exc:
                reply = exc.reply()
                return Response(
                    reply.body, reply.status, {"retry-after": "5"}, media_type="application/json"
                )
            return Response(orjson.dumps(self.state.public_manifest), media_type="application/json")

        @app.get(
            "/metrics",
            summary="Prometheus metrics",
            response_class=Response,
            responses={
                200: {
                    "description": "Prometheus text exposition",
                    "content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}},
                }
            },
        )
        async def metrics() -> Response:
            return Response(self.metrics.render(), headers={"content-type": METRICS_CONTENT_TYPE})

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
            kind = _HTTP_ERROR_KIND.get(exc.status_code, "http_error")
            payload: dict[str, Any] = {"error": kind, "detail": str(exc.detail)}
            request_id = REQUEST_ID.get()
            if request_id is not None:
                payload["requestId"] = request_id
            return Response(
                orjson.dumps(payload), exc.status_code, exc.headers, media_type="application/json"
            )

        app.openapi = lambda: self._openapi(app)  # type: ignore[method-assign]
        return app

    def _openapi(self, app: FastAPI) -> dict[str, Any]:
        """FastAPI's document plus the request schemas of the served model, and X-Request-ID."""
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        validator = self._validator_now()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas["Movie"] = validator.movie_json_schema()
        schemas["MovieBatch"] = validator.batch_json_schema(self.settings.max_batch)
        request_id_header = {
            "X-Request-ID": {
                "description": "the request's id: the client's X-Request-ID if usable, "
                "else a generated one",
                "schema": {"type": "string"},
            }
        }
        for operations in document["paths"].values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    response["headers"] = request_id_header
        if self.state.ready:  # the document depends on the served schema: cache it only then
            app.openapi_schema = document
        return document


_ERROR_KIND_BY_STATUS: Final[dict[int, str]] = {v: k for k, v in ERROR_STATUS.items()}


def _request_body(schema_name: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        hint = " (NaN and Infinity are not valid JSON)" if b"N" in body or b"I" in body else ""
        raise ApiError("invalid_json", f"the body is not valid JSON: {exc}{hint}") from None


def ratings_body(ratings: Any, version: str) -> bytes:
    """The JSON body of a batch answer: the ratings in order, and the model version."""
    payload = {"averageRatings": ratings.astype(np.float64), "modelVersion": version}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _feature_error(exc: FeatureError) -> list[dict[str, Any]]:
    loc: list[str | int] = ["body"] if exc.row is None else ["body", "movies", exc.row]
    return [{"loc": [*loc, exc.field], "msg": exc.message, "type": "value_error"}]


def create_app(settings: Settings | None = None) -> Api:
    """The application for `settings` (default: from the environment)."""
    return Api(settings or Settings())
