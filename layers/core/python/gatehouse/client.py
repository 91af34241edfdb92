"""A small Python client for the agent API, signing every request with SigV4 (requests-aws4auth).

client = GatehouseClient.from_env()                     # GATEHOUSE_ENDPOINT + AWS credentials
client = GatehouseClient.from_local("analyst")          # .gatehouse/local.json (the local stack)
answer = client.submit("demo-prod", "SELECT name, email FROM customers LIMIT 3", reason="...")
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests_aws4auth import AWS4Auth

LOCAL_STATE = Path(".gatehouse") / "local.json"
DEFAULT_TIMEOUT_S = 60.0


class ClientConfigError(RuntimeError):
    """The client does not know where Gatehouse is or who it is."""


@dataclass(frozen=True)
class ApiAnswer:
    status_code: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status_code < 400


def load_local_state(path: Path | None = None) -> dict[str, Any]:
    path = path or LOCAL_STATE
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ClientConfigError(
            f"{path} not found: start the local stack with `gatehouse local up --detach`"
        ) from exc


class GatehouseClient:
    def __init__(
        self,
        endpoint: str,
        auth: AWS4Auth,
        *,
        session: requests.Session | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._auth = auth
        self._http = session or requests.Session()
        self._timeout_s = timeout_s

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> GatehouseClient:
        env = dict(os.environ if env is None else env)
        endpoint = env.get("GATEHOUSE_ENDPOINT")
        if not endpoint:
            raise ClientConfigError("GATEHOUSE_ENDPOINT is not set (the API URL of your stack)")
        import boto3

        creds = boto3.session.Session().get_credentials()
        if creds is None:
            raise ClientConfigError("no AWS credentials found (AWS_ACCESS_KEY_ID, profile, role...)")
        frozen = creds.get_frozen_credentials()
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or _region_of(endpoint)
        auth = AWS4Auth(
            frozen.access_key, frozen.secret_key, region, "execute-api", session_token=frozen.token
        )
        return cls(endpoint, auth)

    @classmethod
    def from_local(cls, agent: str, state_path: Path | None = None) -> GatehouseClient:
        state = load_local_state(state_path)
        keys = (state.get("agents") or {}).get(agent)
        if not keys:
            known = ", ".join(sorted(state.get("agents") or {})) or "none"
            raise ClientConfigError(f"no local agent {agent!r} (known: {known})")
        auth = AWS4Auth(keys["access_key_id"], keys["secret_access_key"], state["region"], "execute-api")
        return cls(state["api"], auth)

    def submit(self, connection: str, sql: str, reason: str = "") -> ApiAnswer:
        return self._call("POST", "/v1/requests", {"connection": connection, "sql": sql, "reason": reason})

    def submit_command(self, connection: str, command: dict[str, Any], reason: str = "") -> ApiAnswer:
        """One command of any kind: `command` is `{"sql": ...}`, `{"http": {...}}`, `{"ssh": {...}}`..."""
        return self._call("POST", "/v1/requests", {"connection": connection, **command, "reason": reason})

    def get_request(self, request_id: str, wait: int = 0) -> ApiAnswer:
        return self._call("GET", f"/v1/requests/{request_id}", params={"wait": wait} if wait else None)

    def list_requests(self, pending: bool = False) -> ApiAnswer:
        return self._call("GET", "/v1/requests", params={"pending": "true"} if pending else None)

    def list_connections(self) -> ApiAnswer:
        return self._call("GET", "/v1/connections")

    def proxy_token(self, connection: str, ttl_s: int | None = None) -> ApiAnswer:
        """A short-lived password for the Postgres proxy (`host`, `port`, `username`, `password`...)."""
        body: dict[str, Any] = {"connection": connection}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return self._call("POST", "/v1/proxy-tokens", body)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None
    ) -> ApiAnswer:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        resp = self._http.request(
            method,
            self.endpoint + path,
            data=data,
            params=params,
            headers=headers,
            auth=self._auth,
            timeout=self._timeout_s,
        )
        try:
            parsed = resp.json()
        except ValueError:
            parsed = {"error": "bad_response", "message": resp.text[:500]}
        if not isinstance(parsed, dict):
            parsed = {"value": parsed}
        return ApiAnswer(resp.status_code, parsed)


def _region_of(endpoint: str) -> str:
    # https://<id>.execute-api.<region>.amazonaws.com
    host = endpoint.split("//", 1)[-1].split("/", 1)[0]
    parts = host.split(".")
    if len(parts) > 3 and parts[1] == "execute-api":
        return parts[2]
    raise ClientConfigError("set AWS_REGION: it cannot be read from GATEHOUSE_ENDPOINT")
