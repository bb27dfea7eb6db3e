"""The studio's feedback page (/studio/feedback) is the review queue of tunelab.serve.routes.review.

That router (`ROUTERS["review"]`, mounted by the studio like every router there) serves /admin/review; the
page lists its items, filters them, and posts approve/edit/reject/skip decisions to it. `status` tells the
page whether the router is there and which routes it has; a server without request logging answers the
queue's calls with a 503 that says to set store.enabled, and the page shows that message.
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
