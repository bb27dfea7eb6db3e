"""HOOK for the feedback loop's review queue (the feedback-loop issue; its router is being built separately).

The studio's feedback page (/studio/feedback) shows the review queue when the server has a review router:
a router registered as `ROUTERS["review"]` in tunelab.serve.routes (the studio mounts every router there).
Until then the page says "not available". When it lands, `status` lists its routes and the page shows the
rows of its first GET route that returns a list (`{"data": [...]}` or a JSON array); wire richer views here.
"""

from __future__ import annotations

from typing import Any

from tunelab.serve.routes import ROUTERS

REVIEW_ROUTER = "review"  # the name the feedback loop's router is registered under in ROUTERS


def status(app: Any) -> dict[str, Any]:
    router = ROUTERS.get(REVIEW_ROUTER)
    if router is None:
        return {"available": False, "message": "The feedback review queue is not available on this server yet "
                                               "(no review router in tunelab.serve.routes)."}  # fmt: skip
    routes = [
        {"path": getattr(r, "path", ""), "methods": sorted(getattr(r, "methods", None) or [])} for r in router.routes
    ]
    listing = next((r["path"] for r in routes if "GET" in r["methods"] and "{" not in r["path"]), None)
    return {"available": True, "routes": routes, "list": listing}
