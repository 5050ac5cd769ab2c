"""The UI's actions in a real headless Chromium, against the live service: each asks for
confirmation; the admin API refuses a wrong token and shows why; the right one promotes, rolls
back, starts and ends a canary, and the service really does it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.store import ModelStore
from tests.serving.artifacts import publish_copy
from tests.serving.browser import Visit, browser_page
from tests.serving.conftest import RunningServer, quiet_settings, running_server

pytestmark = pytest.mark.browser

TOKEN = "ui-test-token"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, trained_store: ModelStore) -> ModelStore:
    """iris v1 (production) and v2 (a copy), without their reports: the page says so."""
    store = ModelStore(tmp_path_factory.mktemp("ui-actions"))
    publish_copy(store, "iris", trained_store, "iris", 1)
    store.promote("iris", 1)
    publish_copy(store, "iris", trained_store, "iris", 1)
    return store


@pytest.fixture(scope="module")
def live(store: ModelStore) -> Iterator[RunningServer]:
    settings = quiet_settings(store, pool_size=1, admin_token=TOKEN, poll_interval_s=0.2)
    with running_server(settings) as running:
        yield running


def wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 15
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def production(live: RunningServer) -> int:
    with live.client() as client:
        version: int = client.get("/models/iris").json()["version"]
        return version


def traffic(live: RunningServer) -> dict[str, Any]:
    with live.client() as client:
        models = client.get("/overview").json()["models"]
    mode: dict[str, Any] = next(m for m in models if m["name"] == "iris")["traffic"]
    return mode


def act(visit: Visit, action: str, accept: bool = True) -> str:
    """Click an action's button, answer its confirmation, and return what the page says."""
    page = visit.page
    dialogs: list[str] = []

    def answer(dialog: Any) -> None:
        dialogs.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", answer)
    page.click(f'button[data-action="{action}"]')
    assert dialogs, "the action did not ask for confirmation"
    if not accept:
        return ""
    page.wait_for_function("document.getElementById('action-status').textContent !== ''")
    text: str = page.inner_text("#action-status")
    if text.startswith("Done"):  # the page reloads itself to show the new state
        page.wait_for_event("load", timeout=15_000)
    return text


def open_page(visit: Visit, live: RunningServer, token: str) -> None:
    visit.page.goto(f"{live.url}/ui/models/iris", wait_until="networkidle")
    visit.page.fill("#admin-token", token)


def test_a_wrong_token_is_refused_and_the_right_one_acts(
    live: RunningServer, tmp_path: Path
) -> None:
    with browser_page() as visit:
        open_page(visit, live, "not-the-token")
        visit.page.select_option("#promote-version", "2")
        said = act(visit, "promote")
        assert said.startswith("Refused (403)")
        assert "not valid" in said
        assert production(live) == 1

        open_page(visit, live, TOKEN)
        visit.page.select_option("#promote-version", "2")
        assert act(visit, "promote", accept=False) == ""  # dismissed: nothing happens
        assert production(live) == 1
        said = act(visit, "promote")
        assert said.startswith("Done (200)"), said
        wait_for(lambda: production(live) == 2)

        open_page(visit, live, TOKEN)
        assert act(visit, "rollback").startswith("Done (200)")
        wait_for(lambda: production(live) == 1)

        open_page(visit, live, TOKEN)
        visit.page.select_option("#candidate-version", "2")
        assert act(visit, "shadow").startswith("Done (200)")
        wait_for(lambda: traffic(live)["mode"] == "shadow")
        assert traffic(live)["shadow"] == 2

        open_page(visit, live, TOKEN)
        visit.page.select_option("#candidate-version", "2")
        visit.page.fill("#canary-weight", "25")
        assert act(visit, "canary").startswith("Done (200)")
        wait_for(lambda: traffic(live)["mode"] == "canary")
        assert traffic(live)["weights"] == {"1": 0.75, "2": 0.25}

        open_page(visit, live, TOKEN)
        assert "canary" in visit.page.inner_text("#experiment")
        rows = visit.page.locator("#experiment table.compare tbody tr")
        assert rows.count() == 2  # as GET /models/iris/compare counts them
        assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(2)] == [
            "production",
            "candidate",
        ]
        assert rows.nth(1).locator("td").nth(2).inner_text() == "25 %"
        assert act(visit, "end").startswith("Done (200)")
        wait_for(lambda: traffic(live)["mode"] == "production")
        visit.page.screenshot(path=str(tmp_path / "actions.png"), full_page=True)
        assert visit.outside == []
        # The 403 of the wrong token is the only error the console saw.
        assert all("403" in e for e in visit.console_errors), visit.console_errors
        assert visit.page_errors == []


def test_the_token_stays_in_the_tab_only(live: RunningServer) -> None:
    with browser_page() as visit:
        open_page(visit, live, TOKEN)
        visit.page.dispatch_event("#admin-token", "change")
        assert "No model card" in visit.page.inner_text("article.model-card")
        kept = visit.page.evaluate("sessionStorage.getItem('servewell-admin-token')")
        assert kept == TOKEN
        assert visit.page.evaluate("localStorage.length") == 0
        assert visit.page.context.cookies() == []


def test_without_an_admin_token_the_page_offers_no_actions(trained_store: ModelStore) -> None:
    settings = quiet_settings(trained_store, pool_size=1)
    with running_server(settings) as running, browser_page() as visit:
        visit.page.goto(f"{running.url}/ui/models/iris", wait_until="networkidle")
        assert visit.page.locator("#actions").count() == 0
        assert "SERVEWELL_ADMIN_TOKEN" in visit.page.inner_text("main")
        assert visit.console_errors == []
