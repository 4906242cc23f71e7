"""Turn pydantic validation errors into one message a user can act on."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(err: ValidationError, what: str = "spec", limit: int = 10) -> str:
    """``invalid spec: spec.lora.rank: Input should be less than or equal to 512 (got 4096); ...``; ``what``
    names the document (a spec, a trainer's report)."""
    parts = []
    for item in err.errors()[:limit]:
        where = ".".join(str(p) for p in (what, *item["loc"]))
        got = item.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        parts.append(f"{where}: {item['msg']}{shown}")
    more = len(err.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return f"invalid {what}: " + "; ".join(parts)
