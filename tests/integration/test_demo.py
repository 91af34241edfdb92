"""`make demo` is the first thing a user runs: it must play through and tell the truth."""

from __future__ import annotations

from gatehouse.local import demo


def test_the_demo_plays_through_and_leaves_nothing_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "DEMO FAILED" not in out
    assert "executed (class read, decision allow, policies prod-read)" in out
    assert "pending_approval (class write" in out
    assert "denied (class ddl" in out
    assert "chain and manifests intact" in out
    assert "altered" in out and "missing" in out  # the tampered copy is caught
    assert not (tmp_path / ".gatehouse" / "local.json").exists()
