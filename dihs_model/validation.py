"""pydantic validation errors as one line a user can act on: the same wording from the HTTP API's
422s, the OIP parser's 400s and a malformed dihs.json."""

from __future__ import annotations


def validation_message(exc: Exception, limit: int = 3, skip: tuple[str, ...] = ("body",)) -> str:
    """The first `limit` errors of a pydantic ValidationError (or FastAPI's RequestValidationError),
    each "where: what", joined by "; " ("body", FastAPI's wrapper, is left out of where); any other
    exception as its message."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for e in errors()[:limit]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in skip)
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)
