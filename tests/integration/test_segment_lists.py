"""Manual lists through the API: CSV uploads as spreadsheets and exports write them, resolved by ingest."""

import json
import uuid


async def _setup(apps, workspace) -> tuple[dict, str]:
    auth = (workspace.write_key, "")
    for user in ("ada", "grace"):
        r = await apps["ingest"].post("/v1/identify", auth=auth, json={
            "userId": user, "anonymousId": f"anon-{user}", "traits": {"email": f"{user}@example.com"}})
        assert r.status_code == 200, r.text
    h = {"Authorization": f"Bearer {workspace.secret_key}"}
    r = await apps["segment"].post("/v1/lists", headers=h, json={"name": uuid.uuid4().hex})
    assert r.status_code == 201
    return h, r.json()["id"]


async def test_csv_headers_naming_any_kind_of_id_are_skipped(apps, workspace) -> None:
    """The docs accept profile ids, userIds, anonymousIds and emails; a column headed ``anonymousId`` (or
    ``Anonymous ID``, ``E-mail``) was read as an id and came back as unknown."""
    h, lid = await _setup(apps, workspace)
    csv_h = {**h, "content-type": "text/csv"}
    for body, added in ((b"\xef\xbb\xbfanonymousId\r\nanon-ada\r\n", 1), (b"Anonymous ID\nanon-ada\n", 0),
                        (b"E-mail,name\r\ngrace@example.com,Grace\r\n", 1), (b"user_id\ngrace\n", 0)):
        r = await apps["segment"].post(f"/v1/lists/{lid}/members/csv", headers=csv_h, content=body)
        assert r.status_code == 200 and r.json() == {"added": added, "removed": 0, "unknown": []}, (body, r.text)
    assert (await apps["segment"].get(f"/v1/lists/{lid}", headers=h)).json()["members"] == 2


async def test_csv_errors_name_the_lines_of_the_file(apps, workspace) -> None:
    """Line numbers of bad ids counted one too many without a header row, and skipped blank lines."""
    h, lid = await _setup(apps, workspace)
    csv_h = {**h, "content-type": "text/csv"}
    for body, lines in ((b"ada@example.com\r\nbad\x01id\r\n", "[2]"), (b"email\nada@example.com\nbad\x01id\n", "[3]"),
                        (b"email\n\nada@example.com\n\n\nbad\x01id\nok\nx" + b"y" * 600 + b"\n", "[6, 8]")):
        r = await apps["segment"].post(f"/v1/lists/{lid}/members/csv", headers=csv_h, content=body)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        assert f"lines {lines} " in r.json()["detail"], (body[:40], r.text)
    assert (await apps["segment"].get(f"/v1/lists/{lid}", headers=h)).json()["members"] == 0


async def test_list_names_postgresql_cannot_hold_are_a_422_naming_the_field(apps, workspace) -> None:
    """A NUL in a list's name got a 422 naming no field (from the database), a lone surrogate a 500."""
    h = {"Authorization": f"Bearer {workspace.secret_key}", "content-type": "application/json"}
    for name in ("beta\x00", "\ud800", "beta \udfff"):
        r = await apps["segment"].post("/v1/lists", headers=h, content=json.dumps({"name": name}))  # \\u escapes
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
        assert [e["loc"] for e in r.json()["errors"]] == [["body", "name"]], r.text
    assert (await apps["segment"].get("/v1/lists", headers=h)).json()["lists"] == []


async def test_a_listed_profile_is_known_before_its_events_arrive(apps, workspace) -> None:
    """A profile ingest knows can be put on a list before segment has folded any of its events; segments
    reading the list then hold it, so its segments and stage are answered (not the unknown profile's 404)."""
    h, lid = await _setup(apps, workspace)
    r = await apps["segment"].post("/v1/segments", headers=h, json={
        "name": uuid.uuid4().hex, "definition": {"type": "list", "list_id": lid}})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    pid = (await apps["ingest"].get("/v1/profiles/ada", headers=h)).json()["id"]
    r = await apps["segment"].get(f"/v1/profiles/{pid}/segments", headers=h)
    assert r.status_code == 404  # nothing of ada has reached segment yet
    r = await apps["segment"].post(f"/v1/lists/{lid}/members", headers=h, json={"ids": ["ada"]})
    assert r.status_code == 200 and r.json()["added"] == 1, r.text
    r = await apps["segment"].get(f"/v1/profiles/{pid}/segments", headers=h)
    assert r.status_code == 200 and r.json() == {"profile_id": pid, "segment_ids": [sid], "stage": None}, r.text
    r = await apps["segment"].get(f"/v1/lifecycle/{pid}", headers=h)
    assert r.status_code == 200 and r.json() == {"profile_id": pid, "stage": None, "since": None}, r.text
