"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``."""
from __future__ import annotations

import re

from fastapi.responses import JSONResponse

from podserve.entrypoints.openai.protocol import ErrorInfo, ErrorResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


class OpenAIError(Exception):
    """An error to return to the client as-is (status code, message, offending field)."""

    def __init__(self, status_code: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


def error_body(status_code: int, message: str, param: str | None = None, code: str | int | None = None) -> dict:
    """The JSON body of an error (also sent as an SSE event when a stream fails midway)."""
    info = ErrorInfo(message=message, type=_TYPES.get(status_code, "invalid_request_error"), param=param,
                     code=code if code is not None else status_code)
    return ErrorResponse(error=info).model_dump()


def error_response(err: OpenAIError) -> JSONResponse:
    return JSONResponse(error_body(err.status_code, err.message, err.param, err.code),
                        status_code=err.status_code, headers=err.headers)


_PARAM_IN_MESSAGE = re.compile(r"SamplingParams\.(\w+)=")


def bad_request_from_value_error(e: ValueError) -> OpenAIError:
    """Engine/SamplingParams ValueErrors -> 400, naming the field when the message does."""
    match = _PARAM_IN_MESSAGE.search(str(e))
    return OpenAIError(400, str(e), param=match.group(1) if match else None)


def validation_error(errors: list[dict]) -> OpenAIError:
    """FastAPI's RequestValidationError list -> one 400 naming the first bad field."""
    if not errors:
        return OpenAIError(400, "invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return OpenAIError(400, f"malformed JSON body: {first.get('msg', '')}", code="json_invalid")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    messages = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', '')}"
                         for e in errors[:5])
    return OpenAIError(400, f"invalid request: {messages}", param=param)
