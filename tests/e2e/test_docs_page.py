"""The API's docs page, as a new user meets it: Debian's headless chromium, driven by
Playwright, opens ``/vx11/docs/`` on a real gateway, authorizes with the token, and runs
"Try it out" on ``POST /vx11/spawn`` with the example body the page offers, unchanged:
the spawn is accepted, and runs. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re

import pytest

from tests.support import ROOT, TOKEN, wait_terminal
from vx11.gateway.api.openapi import DOCS_PATH

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 60_000
"""Longest wait for one page or element, milliseconds (other tests share the two cores)."""
SPAWN_ID = re.compile(r'"spawn_id": "(spawn-[0-9a-f]{8})"')


@pytest.fixture
def page():
    """A page of Debian's chromium (never a browser Playwright downloads)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: Debian's chromium (scripts/test installs it)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is missing: install the test extra"
    )
    sync_api.expect.set_options(timeout=WAIT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        yield page
        browser.close()


def screenshot(element, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    element.screenshot(path=ARTIFACTS / f"docs-page-{name}.png")


@pytest.mark.e2e
def test_try_it_out_on_post_spawn_runs_the_example_spawn(page, stack):
    from playwright.sync_api import expect

    stack.open_window()  # the policy: a spawn is accepted only while the window is open
    assert page.goto(f"{stack.base}{DOCS_PATH}/").status == 200

    # Authorize: the token goes in the X-VX11-Token header of every request the page makes.
    page.locator(".auth-wrapper button.authorize").click()
    dialog = page.locator(".dialog-ux")
    dialog.locator("input").fill(TOKEN["X-VX11-Token"])
    dialog.locator("button.authorize").click()
    expect(dialog.locator("button.authorize")).to_have_count(0)  # now "Logout"
    dialog.locator("button.btn-done").click()

    operation = page.locator(".opblock-post", has=page.locator('[data-path="/vx11/spawn"]'))
    operation.locator(".opblock-summary").click()
    operation.locator("button.try-out__btn").click()
    body = operation.locator("textarea.body-param__text")
    expect(body).to_have_value(re.compile("hello from VX11"))
    assert "callback_url" not in body.input_value()
    screenshot(operation, "try-it-out")

    operation.locator("button.execute").click()
    answer = operation.locator(".live-responses-table .response")
    expect(answer.locator(".response-col_status")).to_have_text("200")
    expect(answer.locator(".response-col_description")).to_contain_text('"status": "QUEUED"')
    expect(answer.locator(".response-col_description")).to_contain_text('"error": null')
    screenshot(operation.locator(".responses-inner > div").first, "executed")

    spawn_id = SPAWN_ID.search(answer.locator(".response-col_description").inner_text())
    assert spawn_id, answer.inner_text()
    record = wait_terminal(stack.base, spawn_id[1])
    assert (record["status"], record["stdout"]) == ("DONE", "hello from VX11\n"), record
