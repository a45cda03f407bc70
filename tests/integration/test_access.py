"""Who may do what: scopes per endpoint, each token's own spawns, expiry, revocation,
and token management over the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from vx11.core.tokens import LAST_USED_RESOLUTION, TokenStore

SPAWN = {"task_type": "python", "code": "print(1)", "ttl_seconds": 30}


@pytest.fixture
def store(redis_url) -> TokenStore:
    return TokenStore(redis.Redis.from_url(redis_url))


def headers_for(store: TokenStore, *scopes: str, **options) -> dict[str, str]:
    token, _ = store.create("-".join(scopes) or "none", list(scopes), **options)
    return {"X-VX11-Token": token}


@pytest.fixture
def open_window(client, auth):
    response = client.post(
        "/vx11/window/open", json={"target": "spawner", "ttl_seconds": 600}, headers=auth
    )
    assert response.status_code == 200


# Every authenticated endpoint, the scope it needs, and a request to it.
ENDPOINTS = [
    ("read", "get", "/vx11/status", None),
    ("read", "get", "/vx11/window/status/spawner", None),
    ("window", "post", "/vx11/window/open", {"target": "spawner", "ttl_seconds": 60}),
    ("window", "post", "/vx11/window/close", {"target": "spawner"}),
    ("spawn", "post", "/vx11/spawn", SPAWN),
    ("read", "get", "/vx11/spawns", None),
    ("read", "get", "/vx11/spawn/spawn-00000000", None),
    ("spawn", "post", "/vx11/spawn/spawn-00000000/cancel", None),
    ("read", "get", "/vx11/spawn/spawn-00000000/events", None),
    ("admin", "get", "/vx11/audit", None),
    ("admin", "get", "/vx11/tokens", None),
    ("admin", "post", "/vx11/tokens", {"label": "x", "scopes": ["read"]}),
    ("admin", "delete", "/vx11/tokens/0123456789ab", None),
    ("read", "get", "/vx11/token", None),
    ("read", "get", "/metrics", None),
]
GRANTS = {  # what each single-scope token may do
    "admin": {"admin", "read"},
    "window": {"window", "read"},
    "spawn": {"spawn", "read"},
    "read": {"read"},
}


@pytest.mark.parametrize("scope", sorted(GRANTS))
@pytest.mark.parametrize(("required", "method", "path", "body"), ENDPOINTS)
def test_each_endpoint_needs_its_scope(client, store, scope, required, method, path, body):
    headers = headers_for(store, scope)
    response = getattr(client, method)(path, json=body, headers=headers)
    if required in GRANTS[scope]:
        assert response.status_code not in (401, 403), response.json
    else:
        assert response.status_code == 403, response.json
        assert response.json == {
            "error": "insufficient_scope",
            "message": f"this token lacks the {required} scope",
            "required": required,
        }


@pytest.mark.parametrize(("required", "method", "path", "body"), ENDPOINTS)
def test_no_token_or_a_wrong_one_is_refused_everywhere(client, required, method, path, body):
    missing = getattr(client, method)(path, json=body)
    assert (missing.status_code, missing.json["error"]) == (401, "auth_required")
    wrong = getattr(client, method)(path, json=body, headers={"X-VX11-Token": "vx11_guess"})
    assert (wrong.status_code, wrong.json["error"]) == (401, "invalid_token")


# --- object-level authorization ------------------------------------------------------------


@pytest.mark.usefixtures("open_window")
def test_a_token_sees_only_its_own_spawns_and_another_ones_are_not_found(client, store):
    alice, bob = headers_for(store, "spawn"), headers_for(store, "spawn")
    admin = headers_for(store, "admin")
    mine = client.post("/vx11/spawn", json=SPAWN, headers=alice).json["spawn_id"]
    uuid = client.get(f"/vx11/spawn/{mine}", headers=alice).json["spawn_uuid"]
    theirs = client.post("/vx11/spawn", json=SPAWN, headers=bob).json["spawn_id"]

    for ident in (mine, uuid):
        for path in (
            f"/vx11/spawn/{ident}",
            f"/vx11/result/{ident}",
            f"/vx11/spawn/{ident}/events",
        ):
            refused = client.get(path, headers=bob)
            assert refused.status_code == 404, path
            assert refused.json["error"] == "not_found"
        assert client.post(f"/vx11/spawn/{ident}/cancel", headers=bob).status_code == 404
    assert client.get(f"/vx11/spawn/{mine}", headers=alice).json["status"] == "QUEUED"

    def listed(headers):
        return {s["spawn_id"] for s in client.get("/vx11/spawns", headers=headers).json["spawns"]}

    assert listed(alice) == {mine}
    assert listed(bob) == {theirs}
    assert listed(admin) == {mine, theirs}
    assert client.get(f"/vx11/spawn/{mine}", headers=admin).status_code == 200


@pytest.mark.usefixtures("open_window")
def test_an_admin_with_the_spawn_scope_may_cancel_anyones_spawn(client, store):
    owner = headers_for(store, "spawn")
    admin = headers_for(store, "admin", "spawn")
    spawn_id = client.post("/vx11/spawn", json=SPAWN, headers=owner).json["spawn_id"]
    response = client.post(f"/vx11/spawn/{spawn_id}/cancel", headers=admin)
    assert response.status_code == 200
    assert response.json["status"] == "CANCELLED"


@pytest.mark.usefixtures("open_window")
def test_the_same_idempotency_key_of_two_tokens_makes_two_spawns(client, store):
    first, second = headers_for(store, "spawn"), headers_for(store, "spawn")
    a = client.post("/vx11/spawn", json=SPAWN, headers={**first, "Idempotency-Key": "k1"})
    b = client.post("/vx11/spawn", json=SPAWN, headers={**second, "Idempotency-Key": "k1"})
    assert a.json["spawn_id"] != b.json["spawn_id"]
    assert "Idempotent-Replayed" not in b.headers


# --- expiry, revocation, last use ------------------------------------------------------------


def test_an_expired_token_is_refused(client, store):
    past = datetime.now(UTC) - timedelta(seconds=1)
    expired = headers_for(store, "read", expires_at=past)
    response = client.get("/vx11/status", headers=expired)
    assert (response.status_code, response.json["error"]) == (401, "invalid_token")
    future = headers_for(store, "read", expires_at=datetime.now(UTC) + timedelta(hours=1))
    assert client.get("/vx11/token", headers=future).status_code == 200


def test_a_revoke_takes_effect_on_the_very_next_request(client, store):
    token, info = store.create("ci", ["read"])
    headers = {"X-VX11-Token": token}
    assert client.get("/vx11/token", headers=headers).status_code == 200
    assert store.revoke(info.token_id)
    assert client.get("/vx11/token", headers=headers).status_code == 401


def test_last_use_is_recorded(client, store):
    token, info = store.create("ci", ["read"])
    assert store.get(info.token_id).last_used_at is None
    before = datetime.now(UTC).replace(microsecond=0)
    assert client.get("/vx11/token", headers={"X-VX11-Token": token}).status_code == 200
    used = store.get(info.token_id).last_used_at
    assert used is not None and used >= before
    assert used - before < LAST_USED_RESOLUTION


# --- token management over the API ----------------------------------------------------------


def test_an_admin_creates_lists_and_revokes_tokens_over_the_api(client, store, redis_url):
    admin = headers_for(store, "admin")
    body = {"label": "ci", "scopes": ["spawn"], "expires_in_seconds": 3600, "max_active_spawns": 3}
    created = client.post("/vx11/tokens", json=body, headers=admin)
    assert created.status_code == 201, created.json
    token = created.json["token"]
    assert token.startswith("vx11_") and len(token) > 40
    assert created.json["scopes"] == ["spawn"]
    assert created.json["max_active_spawns"] == 3
    expires = datetime.fromisoformat(created.json["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)

    me = client.get("/vx11/token", headers={"X-VX11-Token": token}).json
    assert (me["token_id"], me["label"], me["scopes"]) == (
        created.json["token_id"],
        "ci",
        ["spawn"],
    )
    assert "token" not in me

    listing = client.get("/vx11/tokens", headers=admin).json["tokens"]
    assert created.json["token_id"] in {t["token_id"] for t in listing}
    assert token not in str(listing)
    assert token.encode() not in b"".join(
        v
        for key in redis.Redis.from_url(redis_url).keys("*")
        if key.startswith(b"vx11:token:")
        for v in redis.Redis.from_url(redis_url).hgetall(key).values()
    )

    revoked = client.delete(f"/vx11/tokens/{created.json['token_id']}", headers=admin)
    assert revoked.json == {"token_id": created.json["token_id"], "revoked": True}
    assert client.get("/vx11/token", headers={"X-VX11-Token": token}).status_code == 401
    again = client.delete(f"/vx11/tokens/{created.json['token_id']}", headers=admin)
    assert (again.status_code, again.json["error"]) == (404, "not_found")

    audit = client.get("/vx11/audit?event=token_created,token_revoked", headers=admin).json
    assert [e["event"] for e in audit["entries"]] == ["token_revoked", "token_created"]
    assert token not in str(audit)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"label": "x"},
        {"label": "x", "scopes": []},
        {"label": "x", "scopes": ["root"]},
        {"label": "", "scopes": ["read"]},
        {"label": "x", "scopes": ["read"], "expires_in_seconds": 0},
        {"label": "x", "scopes": ["read"], "rate_limit_per_second": -1},
        {"label": "x", "scopes": ["read"], "max_active_spawns": "many"},
    ],
)
def test_a_bad_token_request_is_422(client, auth, body):
    response = client.post("/vx11/tokens", json=body, headers=auth)
    assert (response.status_code, response.json["error"]) == (422, "validation_error")
