"""Turn pydantic validation errors into one message a user can act on."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(err: ValidationError, limit: int = 10) -> str:
    """``spec.lora.rank: Input should be less than or equal to 512 (got 4096); ...``"""
    parts = []
    for item in err.errors()[:limit]:
        where = ".".join(str(p) for p in ("spec", *item["loc"]))
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        parts.append(f"{where}: {item['msg']}{shown}")
    more = len(err.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "invalid spec: " + "; ".join(parts)
