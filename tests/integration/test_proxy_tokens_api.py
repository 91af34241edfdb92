"""POST /v1/proxy-tokens and `gatehouse proxy-token` through the signed local stack.

The answer's password must be one the proxy will accept (checked with the verifier it will use,
against the stack's own Secrets Manager), for the agent that asked and the connection it named;
connections the agent may not use, or that are not Postgres, get none.
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from requests_aws4auth import AWS4Auth

from gatehouse import cli, names
from gatehouse.local.provision import put_item
from gatehouse.proxy_tokens import InvalidProxyTokenError, ProxyTokenKeys, ProxyTokens
from tests.integration.conftest import RunningStack

CONTRACT_KEYS = {"host", "port", "username", "password", "database", "expires_at"}


@pytest.fixture(scope="module")
def verifier(local_stack: RunningStack) -> ProxyTokens:
    """What the proxy will run: the key from the stack's Secrets Manager."""
    return ProxyTokens(ProxyTokenKeys(local_stack.aws("secretsmanager"), names.PROXY_TOKEN_KEY_SECRET))


@pytest.fixture(scope="module")
def extra_connections(local_stack: RunningStack) -> None:
    """A connection no policy permits anything on (env=staging), and a dev one that is not Postgres."""
    ddb = local_stack.aws("dynamodb")
    for name, kind, env in (("staging-db", "postgres", "staging"), ("dev-http", "http", "dev")):
        put_item(
            ddb,
            names.CONNECTIONS_TABLE,
            {
                "name": name,
                "kind": kind,
                "host": "127.0.0.1",
                "port": 5432,
                "database": name,
                "secret_id": names.connection_secret_name(name),
                "attributes": {"env": env},
            },
        )


def signed(local_stack: RunningStack, agent: str = "analyst") -> AWS4Auth:
    keys = local_stack.state["agents"][agent]
    return AWS4Auth(
        keys["access_key_id"], keys["secret_access_key"], local_stack.state["region"], "execute-api"
    )


def post(local_stack: RunningStack, body: dict, agent: str = "analyst") -> requests.Response:
    return requests.post(
        local_stack.state["api"] + "/v1/proxy-tokens",
        data=json.dumps(body),
        headers={"Content-Type": "application/json"},
        auth=signed(local_stack, agent),
        timeout=30,
    )


def test_an_agent_gets_a_password_the_proxy_accepts(local_stack, verifier):
    before = int(time.time())

    resp = post(local_stack, {"connection": "demo-prod"})

    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert CONTRACT_KEYS <= set(body)
    assert body["username"] == "analyst" and body["database"] == "demo-prod"
    assert before + 900 <= body["expires_at"] <= int(time.time()) + 900
    # A credential: no cache on the way may keep it.
    assert resp.headers["Cache-Control"] == "no-store"
    verified = verifier.verify(body["username"], body["password"], body["database"])
    assert verified.principal_arn == local_stack.stack.provisioned.agents["analyst"].user_arn
    assert verified.connection == "demo-prod"
    # It is bound to that connection: the proxy refuses it for the other one.
    with pytest.raises(InvalidProxyTokenError) as caught:
        verifier.verify(body["username"], body["password"], "demo-dev")
    assert caught.value.sqlstate == "28P01"


def test_the_answer_names_the_running_proxy(local_stack):
    body = post(local_stack, {"connection": "demo-dev"}).json()

    host, _, port = local_stack.state["pg_proxy"].rpartition(":")
    assert body["host"] == host and body["port"] == int(port)
    assert body["proxy_running"] is True and "message" not in body


def test_the_agent_may_ask_for_a_lifetime_up_to_12_hours(local_stack, verifier):
    short = post(local_stack, {"connection": "demo-dev", "ttl_s": 120}).json()
    assert short["expires_at"] - short["issued_at"] == 120
    assert verifier.verify("analyst", short["password"], "demo-dev")
    # JSON has one number type: 120.0 is the same lifetime (the OpenAPI schema says integer).
    same = post(local_stack, {"connection": "demo-dev", "ttl_s": 120.0}).json()
    assert same["expires_at"] - same["issued_at"] == 120

    for ttl in (30, 12 * 3600 + 1, "900"):
        resp = post(local_stack, {"connection": "demo-dev", "ttl_s": ttl})
        assert resp.status_code == 400, (ttl, resp.text)
        assert resp.json()["error"] == "bad_request"


def test_a_connection_the_agent_may_not_use_is_answered_as_unknown(local_stack, extra_connections):
    denied = post(local_stack, {"connection": "staging-db"})
    missing = post(local_stack, {"connection": "no-such-db"})

    assert denied.status_code == missing.status_code == 404
    assert denied.json()["error"] == missing.json()["error"] == "unknown_connection"
    assert "password" not in denied.json()


def test_a_connection_that_is_not_postgres_gets_no_password(local_stack, extra_connections):
    resp = post(local_stack, {"connection": "dev-http"})

    assert resp.status_code == 400
    assert resp.json()["error"] == "unsupported_connection_kind"
    assert "password" not in resp.json()


def test_the_route_is_in_the_openapi_document(local_stack):
    url = local_stack.state["api"] + "/v1/openapi.json"
    openapi = requests.get(url, auth=signed(local_stack), timeout=30).json()
    operation = openapi["paths"]["/v1/proxy-tokens"]["post"]
    assert {"200", "400", "404"} <= set(operation["responses"])


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def in_stack_dir(local_stack, tmp_path, monkeypatch):
    """The CLI as a user runs it: `.gatehouse/local.json` in the current directory."""
    (tmp_path / ".gatehouse").mkdir()
    (tmp_path / ".gatehouse" / "local.json").write_text(json.dumps(local_stack.state))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_cli_prints_the_contract_keys_as_json(in_stack_dir, verifier, capsys):
    code = cli.main(["proxy-token", "--connection", "demo-dev", "--as", "analyst", "--json"])

    out = capsys.readouterr().out
    assert code == 0, out
    printed = json.loads(out)
    assert CONTRACT_KEYS <= set(printed)
    assert list(printed)[:6] == ["host", "port", "username", "password", "database", "expires_at"]
    assert verifier.verify(printed["username"], printed["password"], printed["database"])


def test_the_cli_prints_readable_lines_and_fails_on_an_unknown_connection(in_stack_dir, capsys):
    assert cli.main(["proxy-token", "--connection", "demo-dev", "--as", "analyst", "--ttl", "300"]) == 0
    out = capsys.readouterr().out
    for key in CONTRACT_KEYS:
        assert f"\n{key}: " in f"\n{out}", out
    assert "password: gh1." in out and 'PGPASSWORD=<password> psql "host=127.0.0.1 port=' in out

    assert cli.main(["proxy-token", "--connection", "no-such-db", "--as", "analyst"]) == 1
    assert "unknown_connection" in capsys.readouterr().out
