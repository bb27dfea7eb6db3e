"""The deployment registry: which run served under which name on which server, since when, promoted by whom,
with its gate results. A table (`deployments`) in the serve store, beside requests, feedback and reviews.

Each deploy, rollback or adoption (a name found serving a run already) adds a row and closes the row it replaces (`until`); the open row of (server, name)
is what serves there now. A row points at the deployment it replaced (`previous_id`), so a rollback walks
back: it puts back the previous row's adapter and opens a row whose `previous_id` is that row's own previous.
A row with no run records that the name was unloaded (a rollback past the first deployment).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, insert, select, update

from tunelab.errors import TunelabError
from tunelab.serve.review import iso
from tunelab.serve.store import NulSafeString, NulSafeText, Store

registry_metadata = MetaData()
deployments_table = Table(
    "deployments",
    registry_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("server", NulSafeString(512), nullable=False, index=True),
    Column("name", NulSafeString(128), nullable=False, index=True),
    Column("action", String(16), nullable=False),  # deploy | rollback | adopt
    Column("run", NulSafeText, nullable=True),  # None: nothing serves under the name
    Column("adapter", NulSafeText, nullable=True),  # the adapter folder loaded
    Column("adapter_sha256", String(64), nullable=True),
    Column("promoted_by", NulSafeString(128), nullable=False),
    Column("gates", JSON, nullable=True),  # the run's gate report (or why there was none)
    Column("since", DateTime(timezone=True), nullable=False),
    Column("until", DateTime(timezone=True), nullable=True),
    Column("previous_id", Integer, nullable=True),
)


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        store.retrying("deployments", "-", lambda: registry_metadata.create_all(store.engine))

    def current(self, server: str, name: str) -> dict[str, Any] | None:
        """The open row of (server, name), or None."""
        t = deployments_table
        q = select(t).where(t.c.server == server, t.c.name == name, t.c.until.is_(None)).order_by(t.c.id.desc())
        with self.store.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return _row(row) if row else None

    def get(self, row_id: int) -> dict[str, Any] | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(deployments_table).where(deployments_table.c.id == row_id)).mappings().first()
        return _row(row) if row else None

    def servers_of(self, name: str) -> list[str]:
        """Servers where `name` is deployed now."""
        t = deployments_table
        q = select(t.c.server).where(t.c.name == name, t.c.until.is_(None)).distinct()
        with self.store.engine.connect() as conn:
            return [r[0] for r in conn.execute(q)]

    def history(self, name: str | None = None, run: str | None = None) -> list[dict[str, Any]]:
        """Rows of a name, or of a run, oldest first."""
        t = deployments_table
        q = select(t).order_by(t.c.id)
        if name is not None:
            q = q.where(t.c.name == name)
        if run is not None:
            q = q.where(t.c.run == run)
        with self.store.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q).mappings()]

    def record(self, server: str, name: str, action: str, run: str | None, adapter: str | None,
               adapter_sha256: str | None, promoted_by: str, gates: dict[str, Any] | None,
               previous_id: int | None) -> dict[str, Any]:  # fmt: skip
        """Close the open row of (server, name) and open this one; returns it."""
        if action not in ("deploy", "rollback", "adopt"):
            raise TunelabError(f"registry action {action!r}: expected deploy, rollback or adopt")
        now = datetime.now(timezone.utc)
        values = dict(server=server, name=name, action=action, run=run, adapter=adapter, adapter_sha256=adapter_sha256,
                      promoted_by=promoted_by, gates=gates, since=now, until=None, previous_id=previous_id)  # fmt: skip
        t = deployments_table

        def write() -> int:
            with self.store.engine.begin() as conn:
                open_ = (t.c.server == server) & (t.c.name == name) & t.c.until.is_(None)
                conn.execute(update(t).where(open_).values(until=now))
                key = conn.execute(insert(t).values(**values)).inserted_primary_key
                assert key is not None
                return int(key[0])

        row_id = self.store.retrying("deployments", name, write)
        got = self.get(row_id)
        assert got is not None
        return got


def _row(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["since"], out["until"] = iso(out["since"]), iso(out["until"])
    return out
