"""HTTP routes of the referral and loyalty programs: parse, resolve the person, call programs/service.py."""

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response

from services.campaign import ingest_client
from services.campaign.api import KeyText, Limit
from services.campaign.programs import config, earning, leaderboards, ledger, service
from services.campaign.programs.schemas import (
    AdjustIn,
    BadgesOut,
    BalanceOut,
    CodeIn,
    CodeOut,
    CouponPoolOut,
    CouponsIn,
    EntryOut,
    HistoryOut,
    InviteIn,
    InviteOut,
    Leaderboard,
    LoyaltyProgramIn,
    ProgramOut,
    RedeemIn,
    ReferralList,
    ReferralOut,
    ReferralProgramIn,
    TierOut,
)
from shared.auth import WorkspaceDep
from shared.db import SessionDep
from shared.errors import COMMON_ERRORS, BadRequest, problem_schema
from shared.idempotency import mark_replayed, replay_response
from shared.pagination import SeqAfterDep, StampAfterDep
from shared.routing import SegmentRoute
from shared.validation import IsoDatetime, Ref

router = APIRouter(prefix="/v1", route_class=SegmentRoute)  # members' ids may hold a "/"

Member = Annotated[Ref, Path(description="the member: profile id, userId, anonymousId or email; a `/` in it "
                                         "percent-encoded (`org%2F123`)")]
Pool = Annotated[str, Path(pattern=config.POOL_NAME, description="the coupon pool's name")]
IdempotencyKey = Annotated[KeyText, Header(alias="Idempotency-Key",
                                           description="a retry with the same key is the same operation "
                                                       "(keys are per member and operation)")]
PeriodQ = Annotated[leaderboards.Period, Query(description="the calendar period (UTC) containing `at`")]
AtQ = Annotated[IsoDatetime | None, Query(description="a moment in the period (default: now)")]
_NOT_FOUND = {**COMMON_ERRORS, 404: problem_schema("Not found (no such program, profile or referral)")}
_SPEND = {
    **_NOT_FOUND,
    200: replay_response(EntryOut),
    409: problem_schema("Not enough points (`balance` says how many there are), or the Idempotency-Key was used "
                        "for a different operation"),
}


def _bounds(period: leaderboards.Period, at: datetime) -> tuple[datetime | None, datetime | None]:
    try:
        return leaderboards.bounds(period, at)
    except (ValueError, OverflowError):  # a period running past year 9999 (or before year 1)
        raise BadRequest(f"`at` is out of range for a {period} leaderboard") from None


def _now() -> datetime:
    return datetime.now(UTC)


async def _member(request: Request, ws: uuid.UUID, ref: str) -> uuid.UUID:
    return await ingest_client.resolve_user(request.app.state.internal, ws, ref)


async def _person(request: Request, ws: uuid.UUID, ref: str) -> tuple[uuid.UUID, dict[str, Any]]:
    """The profile id and the ids ingest files its events under."""
    pid = await _member(request, ws, ref)
    profile = (await ingest_client.lookup_profiles(request.app.state.internal, ws, [str(pid)])).get(str(pid)) or {}
    return pid, {"user_id": profile.get("user_id"), "anonymous_id": profile.get("anonymous_id")}


def _program_routes(kind: str, model: type[ReferralProgramIn | LoyaltyProgramIn]) -> tuple[Any, Any]:
    """The PUT and GET handlers of one program. The kind is closed over: a default argument would be a
    query parameter clients could set (``?_k=anything`` wrote a program of any kind)."""

    async def _put(body: model, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:  # type: ignore[valid-type]
        enabled, given = body.changes()  # type: ignore[attr-defined]
        async with session.begin():
            return await config.put(session, ws, kind, enabled, given)

    async def _get(ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
        async with session.begin():
            return await config.get(session, ws, kind)

    return _put, _get


for _kind, _body in (("referral", ReferralProgramIn), ("loyalty", LoyaltyProgramIn)):
    _put, _get = _program_routes(_kind, _body)
    router.add_api_route(f"/programs/{_kind}", _put, methods=["PUT"], response_model=ProgramOut,
                         operation_id=f"put_{_kind}_program", tags=["programs"],
                         summary=f"Create or change the workspace's {_kind} program (what it leaves out is kept)",
                         description="Only what the request gives changes: `enabled` and each configuration key "
                                     "left out keep their stored values (`{\"enabled\": false}` pauses the program "
                                     "and keeps its configuration); a configuration key given replaces its value "
                                     "whole. The first PUT fills what it leaves out with the documented defaults. "
                                     "A field the API does not know is a 422 naming it.",
                         responses=COMMON_ERRORS)
    router.add_api_route(f"/programs/{_kind}", _get, methods=["GET"], response_model=ProgramOut,
                         operation_id=f"get_{_kind}_program", tags=["programs"],
                         summary=f"The workspace's {_kind} program", responses=_NOT_FOUND)


@router.put("/coupon-pools/{pool}", response_model=CouponPoolOut, operation_id="upload_coupons", tags=["programs"],
            summary="Add coupon codes to a pool (rewards hand them out, each once)", responses=COMMON_ERRORS)
async def upload_coupons(pool: Pool, body: CouponsIn, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await service.upload_coupons(session, ws, pool, body.codes)


@router.get("/coupon-pools/{pool}", response_model=CouponPoolOut, operation_id="get_coupon_pool", tags=["programs"],
            summary="How many codes of a pool are left", responses=_NOT_FOUND)
async def get_coupon_pool(pool: Pool, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await service.pool_stats(session, ws, pool)


@router.post("/referral/codes", response_model=CodeOut, operation_id="get_referral_code", tags=["referral"],
             summary="A profile's referral code and share links (created on first ask, then stable)",
             responses=_NOT_FOUND)
async def referral_code(body: CodeIn, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    pid, who = await _person(request, ws, body.user)
    async with session.begin():
        return await service.code_for(session, ws, pid, who)


@router.post("/referral/invites", status_code=202, response_model=InviteOut, operation_id="record_referral_invite",
             tags=["referral"], summary="Record that a referrer shared their link (a `Referral Sent` event)",
             description="With an `idempotency_key`, a retry (same referrer, same channel) is answered with the first "
                         "answer (200, `Idempotent-Replayed: true`) and records nothing more; the key used for another "
                         "channel is a 409.",
             responses={**_NOT_FOUND, 200: replay_response(InviteOut),
                        409: problem_schema("The idempotency_key was used for an invite on another channel")})
async def referral_invite(body: InviteIn, ws: WorkspaceDep, session: SessionDep, request: Request,
                          response: Response) -> dict[str, Any]:
    pid, who = await _person(request, ws, body.user)
    async with session.begin():
        out, created = await service.invite(session, ws, pid, who, body.channel, body.idempotency_key, _now())
    if created:
        request.app.state.waker.request("campaign", "forward_program_events")
    else:
        mark_replayed(response)
    return out


@router.get("/referrals", response_model=ReferralList, operation_id="list_referrals", tags=["referral"],
            summary="Referrals: who brought whom, rejected ones with their reason",
            description="Newest first: by `converted_at` (when the referred user signed up), then by `id` "
                        "(descending). Referrals recorded while a client pages never shift its pages: nothing is "
                        "skipped or repeated.", responses=_NOT_FOUND)
async def list_referrals(
    ws: WorkspaceDep, session: SessionDep, request: Request, page: StampAfterDep, limit: Limit = 100,
    referrer: Annotated[Ref | None, Query(description="only this referrer's (profile id, userId or email)")] = None,
    status: Annotated[str | None, Query(description="converted | rejected | rewarded | capped | reversed")] = None,
) -> dict[str, Any]:
    rid = await _member(request, ws, referrer) if referrer else None
    async with session.begin():
        items, nxt = await service.list_referrals(session, ws, rid, status, page.stamp, limit)
    return {"referrals": items, "next_cursor": page.next(nxt)}


@router.get("/referrals/{referral_id}", response_model=ReferralOut, operation_id="get_referral", tags=["referral"],
            summary="One referral with both sides' rewards", responses=_NOT_FOUND)
async def get_referral(referral_id: uuid.UUID, ws: WorkspaceDep, session: SessionDep) -> dict[str, Any]:
    async with session.begin():
        return await service.get_referral(session, ws, referral_id)


@router.get("/referral/leaderboard", response_model=Leaderboard, operation_id="referral_leaderboard",
            tags=["referral"], summary="Top referrers of a period", responses=COMMON_ERRORS)
async def referral_leaderboard(ws: WorkspaceDep, session: SessionDep, period: PeriodQ = "month", at: AtQ = None,
                               limit: Limit = 10) -> dict[str, Any]:
    moment = at or _now()
    start, end = _bounds(period, moment)
    async with session.begin():
        return {"period": period, "start": start, "end": end,
                "referrers": await leaderboards.referrers(session, ws, (start, end), limit)}


@router.get("/loyalty/leaderboard", response_model=Leaderboard, operation_id="loyalty_leaderboard",
            tags=["loyalty"], summary="Members who earned the most points in a period", responses=COMMON_ERRORS)
async def loyalty_leaderboard(ws: WorkspaceDep, session: SessionDep, period: PeriodQ = "month", at: AtQ = None,
                              limit: Limit = 10) -> dict[str, Any]:
    moment = at or _now()
    start, end = _bounds(period, moment)
    async with session.begin():
        return {"period": period, "start": start, "end": end,
                "members": await leaderboards.members(session, ws, (start, end), limit)}


@router.get("/loyalty/members/{member}/balance", response_model=BalanceOut, operation_id="loyalty_balance",
            tags=["loyalty"], summary="A member's points and what expires next", responses=_NOT_FOUND)
async def loyalty_balance(member: Member, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    pid = await _member(request, ws, member)
    async with session.begin():
        return await service.balance(session, ws, pid, _now())


@router.get("/loyalty/members/{member}/history", response_model=HistoryOut, operation_id="loyalty_history",
            tags=["loyalty"], summary="A member's ledger, newest first", responses=_NOT_FOUND)
async def loyalty_history(
    member: Member, ws: WorkspaceDep, session: SessionDep, request: Request, page: SeqAfterDep,
    limit: Limit = 100,
) -> dict[str, Any]:
    pid = await _member(request, ws, member)
    async with session.begin():
        items, nxt = await ledger.history(session, ws, pid, int(page.position) if page.position else None, limit)
    return {"entries": items, "next_cursor": page.next(nxt)}


@router.post("/loyalty/members/{member}/redeem", status_code=201, response_model=EntryOut,
             operation_id="loyalty_redeem", tags=["loyalty"],
             summary="Spend points (Idempotency-Key: a retry returns the first answer, 200)", responses=_SPEND)
async def loyalty_redeem(member: Member, body: RedeemIn, key: IdempotencyKey, ws: WorkspaceDep, session: SessionDep,
                         request: Request, response: Response) -> dict[str, Any]:
    pid = await _member(request, ws, member)
    async with session.begin():
        entry, created = await service.redeem(session, ws, pid, body.points, body.reason, key, _now())
    if not created:
        mark_replayed(response)
    return entry


@router.post("/loyalty/members/{member}/adjust", status_code=201, response_model=EntryOut,
             operation_id="loyalty_adjust", tags=["loyalty"],
             summary="Credit or debit points by hand (Idempotency-Key)", responses=_SPEND)
async def loyalty_adjust(member: Member, body: AdjustIn, key: IdempotencyKey, ws: WorkspaceDep, session: SessionDep,
                         request: Request, response: Response) -> dict[str, Any]:
    pid, who = await _person(request, ws, member)
    async with session.begin():
        entry, created = await service.adjust(session, ws, pid, body.points, body.reason, key, _now(), who)
    if not created:
        mark_replayed(response)
    return entry


@router.get("/loyalty/members/{member}/tier", response_model=TierOut, operation_id="loyalty_tier", tags=["loyalty"],
            summary="A member's tier, its benefits and what the next one needs", responses=_NOT_FOUND)
async def loyalty_tier(member: Member, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    pid = await _member(request, ws, member)
    async with session.begin():
        return await service.tier(session, ws, pid, _now())


@router.get("/loyalty/members/{member}/badges", response_model=BadgesOut, operation_id="loyalty_badges",
            tags=["loyalty"], summary="A member's badges: earned, and progress on the others", responses=_NOT_FOUND)
async def loyalty_badges(member: Member, ws: WorkspaceDep, session: SessionDep, request: Request) -> dict[str, Any]:
    pid = await _member(request, ws, member)
    async with session.begin():
        return {"badges": await earning.badges_of(session, ws, pid)}
