"""`make demo` is the first thing a user runs: it must play through and tell the truth."""

from __future__ import annotations

import re

from gatehouse.local import demo


def _between(text: str, first: int, last: int) -> str:
    """The transcript of steps `first` up to (not including) `last`."""
    return text[text.index(f"\n== {first}. ") : text.index(f"\n== {last}. ")]


def test_the_demo_plays_through_and_leaves_nothing_running(tmp_path, monkeypatch, capsys):
    # Given the passwords the demo is handed for the proxy
    passwords: list[str] = []
    real_login = demo.proxy_login

    def remembering_login(connection: str = "demo-prod") -> demo.ProxyLogin:
        login = real_login(connection)
        passwords.append(login.password)
        return login

    monkeypatch.setattr(demo, "proxy_login", remembering_login)
    monkeypatch.chdir(tmp_path)

    # When a user runs `make demo`
    assert demo.main() == 0

    # Then it plays through and says what Gatehouse did
    out = capsys.readouterr().out
    assert "DEMO FAILED" not in out
    assert "executed (class read, decision allow, policies prod-read)" in out
    assert "pending_approval (class write" in out
    assert "denied (class ddl" in out
    assert "chain and manifests intact" in out
    assert "altered" in out and "missing" in out  # the tampered copy is caught
    assert not (tmp_path / ".gatehouse" / "local.json").exists()

    # And psql through the proxy: a masked read, a refused DDL, a write held then run once
    psql = _between(out, 10, 13)
    assert 'sslmode=require" -c' in psql and "PGPASSWORD=<password> psql" in psql
    assert passwords and not any(password in out for password in passwords)
    assert "(3 rows)" in psql and psql.count("[REDACTED]") == 3
    assert len(re.findall(r"\| hash:[0-9a-f]{16} \| hash:[0-9a-f]{16} \| \*{4}[ *-]*\d{4} +\|", psql)) == 3
    assert "ERROR:  42501: permission denied by Gatehouse policy prod-no-ddl-or-privilege" in psql
    held = re.findall(
        r"ERROR:  42501: Gatehouse: this statement needs approval by dba: request ([0-9a-f-]{36})", psql
    )
    assert len(held) == 2 and held[0] != held[1]  # the first send, and the send after the approved one
    assert "\n  UPDATE 1\n" in psql
    assert (
        f"request {held[0]}: executed (class write, decision approval, policies prod-write-needs-dba)" in psql
    )
    assert "ok: the database holds the approved change" in psql.split("UPDATE 1", 1)[1]

    # And the other target kinds: a masked HTTP read, then a change of each kind held and approved
    targets = _between(out, 13, 14)
    assert targets.count("-> 202 ") == 4 and "-> 200 " in targets
    assert '"name": "[REDACTED]"' in targets and '"email": "[EMAIL]"' in targets
    for connection in ("demo-http", "demo-k8s", "demo-ssh"):
        assert f"ok: {connection}: approved by U_ALICE, it ran once" in targets
    assert "ok: the cluster holds the approved change (3 replicas)" in targets
    assert '"statement_class": "secrets"' in targets
