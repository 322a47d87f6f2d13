"""refunds per order, refunds waiting for their order; last seen is the last activity

``profile_orders`` gains ``refunded`` (what refunds took off the revenue for the order so far: the refunds naming
an order take off no more than its value in all — a full refund re-sent by an SDK took it off twice) and rows for
order ids a refund named before its order came (``value`` null; ``refunded`` the amounts stated, taken off at once,
``refund_all`` for a refund stating none): when the order comes its refunds are settled to its value. An order
counted before segment_0006 has no row and never comes again: a refund stating an amount takes that off, as
before. Orders counted before this revision start at nothing refunded (their refunds are not tied to them in what
was stored): one refunded then can be refunded once more, up to its value. Revenue already taken off twice stays
so.

``profile_stats.last_seen`` is the last activity alone (track, page, screen), null until the first; an
identified-only profile's last seen is read as its first seen. It held first seen for such a profile, so a CRM
back-fill dated 100 days ago was churned at once, and "reactivated" by its first event. Rows stored that way are
cleared where that is certain:

- last seen is first seen (an activity would be at that instant: no later one, no earlier one);
- every event counted for the profile (``event_counts``, kept whatever the retention) is one Tenure recorded
  about them (delivery's and programs' events, not activity): named as one of them, and each occurrence stored
  in ``profile_events`` under the messageId Tenure gives them (``delivery-…``, ``program-…``). An occurrence
  retention deleted cannot be told from the person's own event of that name (a customer's email tool may send
  ``Email Opened`` too): such a profile keeps its last seen;
- its first seen is the time of one of its identify calls' traits (an unnamed page or screen view counts no
  event and stores none, and is activity: the identify's time is what tells the two apart). A profile whose
  traits were all set again later (a nightly CRM sync) no longer holds that time and keeps its last seen: from
  what segment stored it cannot be told from a visitor who viewed one unnamed page and was identified later.
  Trait times that are not timestamps PostgreSQL reads (``2026-02-30T00:00:00Z``, an offset of ``+99:00``)
  match nothing.

The daily lifecycle check then moves them out of at_risk / churned.

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

# the events Tenure records about a person (not their activity: attributes.is_activity), as this release names
# them: delivery (consent.queue_event) and programs (programs.outbox.emit); a reward's own configured event is not
# known here (a profile with one keeps its last seen)
_OWN_EVENTS = ('Email Delivered', 'Email Opened', 'Email Link Clicked', 'Email Bounced', 'Email Marked as Spam',
               'SMS Delivered', 'SMS Failed', 'Unsubscribed', 'Resubscribed', 'Subscription Changed', 'Opted In',
               'Loyalty Tier Changed', 'Badge Earned', 'Referral Sent', 'Referral Converted',
               'Referral Reward Granted', 'Referral Reward Reversed')


def upgrade() -> None:
    op.add_column('profile_orders', sa.Column('refunded', sa.Numeric(), server_default='0', nullable=False),
                  schema='segment')
    op.add_column('profile_orders', sa.Column('refund_all', sa.Boolean(), server_default='false', nullable=False),
                  schema='segment')
    for column in ('event', 'value', 'at'):
        op.alter_column('profile_orders', column, nullable=True, schema='segment')
    # a trait time that looks like a timestamp but is none (2026-02-30, +99:00) is null, not an aborted upgrade
    op.execute(sa.text(
        """
        create function segment.segment_0007_timestamp(value text) returns timestamptz
        language plpgsql stable as $$
        begin
            return value::timestamptz;
        exception when others then
            return null;
        end $$
        """))
    own = ', '.join("'" + name.replace("'", "''") + "'" for name in _OWN_EVENTS)
    op.execute(sa.text(
        f"""
        update segment.profile_stats s set last_seen = null
         where s.last_seen = s.first_seen
           and not exists (select 1 from segment.event_counts c
                            where c.workspace_id = s.workspace_id and c.profile_id = s.profile_id
                              and c.event not in ({own}))
           and (select coalesce(sum(c.count), 0) from segment.event_counts c
                 where c.workspace_id = s.workspace_id and c.profile_id = s.profile_id)
             = (select count(*) from segment.profile_events e
                 where e.workspace_id = s.workspace_id and e.profile_id = s.profile_id and e.event in ({own})
                   and (e.message_id like 'delivery-%' or e.message_id like 'program-%'))
           and exists (select 1 from segment.profile_traits t,
                               jsonb_each_text(case when jsonb_typeof(t.trait_times) = 'object'
                                                    then t.trait_times else '{{}}' end) x
                        where t.workspace_id = s.workspace_id and t.profile_id = s.profile_id
                          and x.value ~ '{_ISO}'
                          and segment.segment_0007_timestamp(x.value) = s.first_seen)
        """))
    op.execute(sa.text("drop function segment.segment_0007_timestamp(text)"))


def downgrade() -> None:
    op.execute(sa.text("update segment.profile_stats set last_seen = first_seen where last_seen is null"))
    op.execute(sa.text("delete from segment.profile_orders where value is null"))
    for column in ('event', 'value', 'at'):
        op.alter_column('profile_orders', column, nullable=False, schema='segment')
    op.drop_column('profile_orders', 'refund_all', schema='segment')
    op.drop_column('profile_orders', 'refunded', schema='segment')
