"""refunds per order, refunds waiting for their order; last seen is the last activity

``profile_orders`` gains ``refunded`` (what refunds took off the order so far: the refunds naming an order take
off no more than its value in all — a full refund re-sent by an SDK took it off twice) and rows for order ids a
refund named before its order came (``value`` null; ``refunded`` the amounts stated, ``refund_all`` for a refund
stating none): the refund waits there and is taken off when the order comes, instead of being lost.
Orders counted before this revision start at nothing refunded (their refunds are not tied to them in what was
stored): one refunded then can be refunded once more, up to its value. Revenue already taken off twice stays so.

``profile_stats.last_seen`` is the last activity alone (track, page, screen), null until the first; an
identified-only profile's last seen is read as its first seen. It held first seen for such a profile, so a CRM
back-fill dated 100 days ago was churned at once. Rows stored that way are cleared where that is certain: no
event of the profile was ever counted, and its first seen is the time of one of its identify calls' traits (an
unnamed page view counts no event, but is no identify). The daily lifecycle check then moves them out of
at_risk / churned.

Revision ID: segment_0007
Revises: segment_0006
Create Date: 2026-11-29 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = 'segment_0007'
down_revision: str | None = 'segment_0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# a timestamp as segment writes trait times (evaluation._ts_key) or ingest sends them with a merge
_ISO = r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?([+-]\d\d:\d\d|Z)$'


def upgrade() -> None:
    op.add_column('profile_orders', sa.Column('refunded', sa.Numeric(), server_default='0', nullable=False),
                  schema='segment')
    op.add_column('profile_orders', sa.Column('refund_all', sa.Boolean(), server_default='false', nullable=False),
                  schema='segment')
    for column in ('event', 'value', 'at'):
        op.alter_column('profile_orders', column, nullable=True, schema='segment')
    op.execute(sa.text(
        f"""
        update segment.profile_stats s set last_seen = null
         where s.last_seen = s.first_seen
           and not exists (select 1 from segment.event_counts c
                            where c.workspace_id = s.workspace_id and c.profile_id = s.profile_id)
           and exists (select 1 from segment.profile_traits t,
                               jsonb_each_text(case when jsonb_typeof(t.trait_times) = 'object'
                                                    then t.trait_times else '{{}}' end) x
                        where t.workspace_id = s.workspace_id and t.profile_id = s.profile_id
                          and case when x.value ~ '{_ISO}' then x.value::timestamptz end = s.first_seen)
        """))


def downgrade() -> None:
    op.execute(sa.text("update segment.profile_stats set last_seen = first_seen where last_seen is null"))
    op.execute(sa.text("delete from segment.profile_orders where value is null"))
    for column in ('event', 'value', 'at'):
        op.alter_column('profile_orders', column, nullable=False, schema='segment')
    op.drop_column('profile_orders', 'refund_all', schema='segment')
    op.drop_column('profile_orders', 'refunded', schema='segment')
