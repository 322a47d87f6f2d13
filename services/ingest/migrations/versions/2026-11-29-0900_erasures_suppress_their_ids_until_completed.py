"""every erasure suppresses the person's ids until every service has erased; a probe that waits for erasures

Until now only an erasure that asked for ``suppress`` kept hashes of the person's ids, so an event about
them that reached ingest while segment, campaign or delivery had not erased yet (delivery's feedback, an
SDK's retry) created a profile for them again. Now every erasure writes the hashes, owned by its request
(``request_id`` joins the key, so two requests can hold the same id), and those of a request without
``suppress`` are deleted when it completes.

``ingest.suppression_probe(ws)`` is the one statement tracking runs per workspace and group: it takes the
workspace's erasure lock in shared mode (an erasure holds it exclusively until it commits), then looks for
suppressions with a fresh snapshot — a VOLATILE PL/pgSQL function takes one per statement, so an erasure
that committed while the probe waited is seen. One plain SELECT could not: its snapshot predates the wait.

Requests still pending at upgrade get their hashes from the ids the audit row holds (``identities``,
values without their kind: each is hashed as a userId, an anonymousId and an email).

Revision ID: ingest_0003
Revises: ingest_0002
Create Date: 2026-11-29 09:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "ingest_0003"
down_revision: str | None = "ingest_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The lock key is services/ingest/privacy.py's _ERASURE_LOCK: keep them equal.
_PROBE = """
create function ingest.suppression_probe(ws uuid) returns boolean
language plpgsql volatile as $$
begin
    perform pg_advisory_xact_lock_shared(hashtextextended('ingest.erasure:' || ws::text, 0));
    return exists (select 1 from ingest.suppressions where workspace_id = ws);
end
$$
"""


def upgrade() -> None:
    # every erasure has set request_id; a row without one (none expected) stays, as a permanent suppression
    op.execute("update ingest.suppressions set request_id = '00000000-0000-0000-0000-000000000000' "
               "where request_id is null")
    op.alter_column("suppressions", "request_id", nullable=False, schema="ingest")
    op.drop_constraint("pk_suppressions", "suppressions", schema="ingest", type_="primary")
    op.create_primary_key("pk_suppressions", "suppressions", ["workspace_id", "id_hash", "request_id"],
                          schema="ingest")
    op.execute(
        "insert into ingest.suppressions (workspace_id, id_hash, request_id) "
        "select r.workspace_id, sha256(convert_to(k.kind || ':' || v.value, 'UTF8')), r.id "
        "from ingest.privacy_requests r cross join lateral jsonb_array_elements_text(r.identities) as v(value) "
        "cross join unnest(array['user_id', 'anonymous_id', 'email']) as k(kind) "
        "where r.status = 'pending' and not r.suppress and jsonb_typeof(r.identities) = 'array' "
        "on conflict do nothing"
    )
    op.execute(_PROBE)


def downgrade() -> None:
    op.execute("drop function ingest.suppression_probe(uuid)")
    op.execute("delete from ingest.suppressions s using ingest.privacy_requests r "
               "where r.id = s.request_id and not r.suppress")
    op.execute("delete from ingest.suppressions s using ingest.suppressions o "
               "where o.workspace_id = s.workspace_id and o.id_hash = s.id_hash and o.request_id < s.request_id")
    op.drop_constraint("pk_suppressions", "suppressions", schema="ingest", type_="primary")
    op.create_primary_key("pk_suppressions", "suppressions", ["workspace_id", "id_hash"], schema="ingest")
    op.alter_column("suppressions", "request_id", nullable=True, schema="ingest")
