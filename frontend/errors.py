"""OpenAI-shaped API errors: the one place that turns failures into error JSON.

Every error the HTTP layer returns has OpenAI's body shape
``{"error": {"message", "type", "param", "code"}}``, so the official client
raises the matching ``openai.*Error`` and shows the message.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    """An error that maps to one HTTP status and one OpenAI error body."""

    status: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, message={self.message!r}, param={self.param!r})"


class BadRequestError(APIError):
    status = 400
    type = "invalid_request_error"


class AuthenticationError(APIError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFoundError(APIError):
    status = 404
    type = "invalid_request_error"
    default_code = "model_not_found"


class PayloadTooLargeError(APIError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class UnprocessableEntityError(APIError):
    status = 422
    type = "invalid_request_error"


class RateLimitError(APIError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class InternalServerError(APIError):
    status = 500
    type = "server_error"


class ServiceUnavailableError(APIError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


def bad_request(message: str, param: str | None = None) -> BadRequestError:
    return BadRequestError(message, param=param)


def model_not_found(model: str) -> NotFoundError:
    return NotFoundError(f"The model `{model}` does not exist.", param="model")


def unauthorized() -> AuthenticationError:
    return AuthenticationError("Invalid or missing API key. Send 'Authorization: Bearer <key>'.")


def payload_too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body of {size} bytes exceeds the limit of {limit} bytes.")


def overloaded(message: str = "The server is overloaded; retry later.") -> ServiceUnavailableError:
    return ServiceUnavailableError(message)


def as_api_error(exc: BaseException) -> APIError:
    """Any exception as an APIError; unexpected ones become a 500 without internals."""
    if isinstance(exc, APIError):
        return exc
    return InternalServerError(f"Internal server error: {type(exc).__name__}")


def error_body(err: APIError) -> dict[str, Any]:
    """The JSON body OpenAI returns for an error, exactly these four keys."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}
