"""The FastAPI side of the API's tokens: the bearer scheme and the route dependency.

Apart from :mod:`fleetgate.api.auth` so that issuing and checking tokens does not load
FastAPI (the server builds its HTTP application on the first request that needs it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleetgate.api.auth import AuthError, Principal

if TYPE_CHECKING:
    from fleetgate.api.auth import Authenticator

# OpenAPI's security scheme (the "Authorize" button in /docs); errors are ours, not its 403.
BEARER: Final = HTTPBearer(auto_error=False, description="a token from `fleetgate token`")


def bearer_dependency(auth: Authenticator, scope: str) -> Callable[..., Principal]:
    """A FastAPI dependency that admits a bearer token holding ``scope``."""

    def authorised(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(BEARER),  # noqa: B008
    ) -> Principal:
        token = credentials.credentials if credentials is not None else None
        if token is None and request.headers.get("authorization"):
            raise AuthError("invalid_token", "the Authorization header must be 'Bearer <token>'")
        return auth.verify(token, scope)

    return authorised
