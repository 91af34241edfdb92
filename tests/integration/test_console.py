"""The approvals console in headless Chromium, over the whole local stack.

A real click on Approve in Debian's Chromium (driven by Playwright, never a downloaded browser)
goes through the console's backend, as a signed Slack interaction, to the API's
`/slack/interactions`, the Slack function, the vote, Step Functions in moto, and the executor;
the agent's long poll then returns `executed`. Screenshots of the page are kept under
tests/artifacts/ (their paths are printed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from gatehouse.client import ApiAnswer
from gatehouse.local.console import ApprovalsConsole

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# Markup an agent might smuggle into a statement: it must stay characters on the screen.
HOSTILE = "</pre><script>window.__pwned = 1</script><img src=x onerror=window.__pwned=2> <@U_ALICE> *loud*"
UI_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `make install` installs Debian's chromium package")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, local_stack: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 1400})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(local_stack.state["console"])
    pg.wait_for_selector("body[data-loaded='1']", timeout=UI_TIMEOUT_MS)
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"the page raised: {errors}"


def screenshot(pg: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"console screenshot: {path}")
    return path


def submit_write(local_stack: Any, customer_id: int, note: str) -> str:
    answer = local_stack.client("analyst").submit(
        "demo-prod",
        f"UPDATE customers SET notes = '{note}' WHERE id = {customer_id}",
        reason=f"console test <b>{customer_id}</b> & co",
    )
    assert answer.status_code == 202, answer.body
    assert answer.body["status"] == "pending_approval"
    return str(answer.body["request_id"])


def notes_of(local_stack: Any, customer_id: int) -> str:
    db = local_stack.db("demo-prod")
    try:
        return str(db.run("SELECT notes FROM customers WHERE id = :id", id=customer_id)[0][0])
    finally:
        db.close()


def card(pg: Page, section: str, request_id: str) -> Any:
    return pg.locator(f"#{section} article[data-request-id='{request_id}']")


def test_chromium_click_on_approve_runs_the_command_and_the_agents_long_poll_returns_executed(
    local_stack: Any, page: Page
) -> None:
    # Given a write on prod waiting for approval, its statement full of markup
    request_id = submit_write(local_stack, 1, HOSTILE.replace("'", "''"))
    pending = card(page, "pending", request_id)
    pending.wait_for(timeout=UI_TIMEOUT_MS)

    # Then the console shows it as Slack would, the hostile text as plain characters
    text = pending.inner_text()
    assert "<script>window.__pwned = 1</script>" in text
    assert "console test <b>1</b> & co" in text  # the agent's reason, escaped for Slack, shown as typed
    assert "demo-prod" in text
    assert "Impact preview" in text
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0

    # And the agent is long-polling for the outcome
    polled: list[ApiAnswer] = []
    agent = threading.Thread(
        target=lambda: polled.append(local_stack.client("analyst").get_request(request_id, wait=20))
    )
    agent.start()

    # When U_ALICE clicks Approve in Chromium
    page.select_option("#approver", "U_ALICE")
    clicked = time.monotonic()
    pending.locator("button[data-action-id='gatehouse_approve']").click()

    # Then she sees Gatehouse's reply, and the agent's long poll returns the executed result
    page.wait_for_selector("#reply.ok:not(:has-text('Sending'))", timeout=UI_TIMEOUT_MS)
    agent.join(30)
    assert not agent.is_alive()
    answer = polled[0]
    deadline = time.monotonic() + 30
    while answer.body.get("status") != "executed" and time.monotonic() < deadline:
        answer = local_stack.client("analyst").get_request(request_id, wait=5)
    assert answer.body.get("status") == "executed", answer.body
    print(f"click on Approve -> agent saw executed: {time.monotonic() - clicked:.2f} s")

    # And the message moves to the decided ones on the page, without a reload
    decided = card(page, "recent", request_id)
    decided.wait_for(timeout=UI_TIMEOUT_MS)
    assert decided.locator("button[data-action-id='gatehouse_approve']").count() == 0
    assert "Approved" in decided.inner_text()
    assert page.evaluate("window.__pwned") is None
    shot = screenshot(page, "console-approved")
    assert shot.stat().st_size > 10_000

    # And the row really changed, exactly as approved
    assert notes_of(local_stack, 1) == HOSTILE


def test_self_approval_is_refused_in_the_console_and_the_request_stays_pending(
    local_stack: Any, page: Page
) -> None:
    # Given a request by analyst, whose owner is U_BOB
    request_id = submit_write(local_stack, 2, "bob tries")
    pending = card(page, "pending", request_id)
    pending.wait_for(timeout=UI_TIMEOUT_MS)

    # When U_BOB clicks Approve
    page.select_option("#approver", "U_BOB")
    pending.locator("button[data-action-id='gatehouse_approve']").click()

    # Then the console shows the refusal, and nothing was decided
    reply = page.locator("#reply.refused")
    reply.wait_for(timeout=UI_TIMEOUT_MS)
    assert "may not approve" in reply.inner_text()
    screenshot(page, "console-self-approval-refused")
    assert local_stack.client("analyst").get_request(request_id).body["status"] == "pending_approval"
    page.wait_for_timeout(1500)  # a refresh later the buttons are back
    assert (
        card(page, "pending", request_id).locator("button[data-action-id='gatehouse_approve']").is_enabled()
    )


def test_deny_asks_for_a_reason_and_the_agent_sees_who_denied_and_why(local_stack: Any, page: Page) -> None:
    request_id = submit_write(local_stack, 3, "to be denied")
    pending = card(page, "pending", request_id)
    pending.wait_for(timeout=UI_TIMEOUT_MS)

    # When U_ALICE clicks Deny, the reason form opens; she types a reason and submits
    page.select_option("#approver", "U_ALICE")
    pending.locator("button[data-action-id='gatehouse_deny']").click()
    page.locator("#deny-modal[open]").wait_for(timeout=UI_TIMEOUT_MS)
    page.fill("#deny-reason", "not during the freeze <@U_BOB>")
    page.click("#deny-submit")

    # Then the request is denied with her reason, and the page shows it decided
    page.wait_for_selector("#reply.ok:not(:has-text('Sending'))", timeout=UI_TIMEOUT_MS)
    card(page, "recent", request_id).wait_for(timeout=UI_TIMEOUT_MS)
    body = local_stack.client("analyst").get_request(request_id).body
    assert body["status"] == "denied"
    assert body.get("decided_reason") == "not during the freeze <@U_BOB>"
    assert notes_of(local_stack, 3) != "to be denied"


def test_another_site_cannot_make_the_browser_vote(local_stack: Any) -> None:
    # The console signs votes with the app's secret: only its own page may ask it to.
    url = local_stack.state["console"].rstrip("/")
    port = url.rsplit(":", 1)[1]
    session = requests.Session()
    session.trust_env = False
    vote = {"user": "U_ALICE", "request_id": "req-x", "decision": "approve"}

    cross_origin = session.post(f"{url}/api/vote", json=vote, headers={"Origin": "http://evil.example"})
    assert cross_origin.status_code == 403
    simple_form = session.post(f"{url}/api/vote", data="{}", headers={"Content-Type": "text/plain"})
    assert simple_form.status_code == 415
    rebound = session.get(f"{url}/api/state", headers={"Host": f"evil.example:{port}"})
    assert rebound.status_code == 403
    page = session.get(f"{url}/")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_a_console_with_the_wrong_signing_secret_is_refused_and_nothing_is_voted(
    local_stack: Any, browser: Browser
) -> None:
    # Given a console that signs with a secret that is not the Slack app's
    forger = ApprovalsConsole(
        local_stack.state["slack_api"],
        local_stack.state["api"].rstrip("/") + "/slack/interactions",
        "not-the-signing-secret",
        approvers={"U_ALICE": "alice"},
    )
    request_id = submit_write(local_stack, 8, "forged approval")
    with forger:
        context = browser.new_context()
        try:
            pg = context.new_page()
            pg.goto(forger.url)
            pending = card(pg, "pending", request_id)
            pending.wait_for(timeout=UI_TIMEOUT_MS)

            # When its Approve is clicked
            pending.locator("button[data-action-id='gatehouse_approve']").click()

            # Then Gatehouse answers 401, the page says so, and the request is still pending
            reply = pg.locator("#reply.refused")
            reply.wait_for(timeout=UI_TIMEOUT_MS)
            assert "401" in reply.inner_text()
        finally:
            context.close()
    assert local_stack.client("analyst").get_request(request_id).body["status"] == "pending_approval"
    assert notes_of(local_stack, 8) != "forged approval"
