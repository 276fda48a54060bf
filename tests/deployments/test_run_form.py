"""Ops in a browser: the tag-sync Run form filled, submitted, watched to Completed, artifact read.

Playwright for Python drives Debian's Chromium (`executable_path`; no browser download) against
a real `siyu up`: what ops do with a mouse, nothing reached through the API on their behalf
except waiting for the run to end.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.deployments.test_up import (
    CHROMIUM_FLAGS,
    RunningUp,
    ensure_chromium,
    flow_run_state,
    free_port,
)

RUN_NAME = "browser dry run"
# The UI's own pages: a deployment's Run form, and a flow run's page.
FLOW_RUN_PAGE = re.compile(r"/runs/flow-run/([0-9a-f-]{36})")


def _artifacts(api: str, flow_run_id: str) -> list[dict]:
    response = requests.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def _run_named(api: str, deployment_id: str, name: str) -> str | None:
    """The id of the deployment's flow run whose name starts with `name`, if there is one."""
    response = requests.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "limit": 50},
        timeout=10,
    )
    response.raise_for_status()
    named = [r["id"] for r in response.json() if r["name"].startswith(name)]
    assert len(named) <= 1, f"one submit made {len(named)} runs"
    return named[0] if named else None


@pytest.fixture
def up(tmp_path: Path) -> Iterator[RunningUp]:
    """A `siyu up` of its own (500 sample customers), killed whatever the test's outcome."""
    running = RunningUp(tmp_path / "siyu-home", tmp_path / "up.log", free_port(), free_port())
    yield running
    running.kill_everything()


@pytest.mark.browser
def test_ops_run_a_dry_tag_sync_from_the_run_form_and_read_its_artifact(
    tmp_path: Path, up: RunningUp, capsys
) -> None:
    from playwright.sync_api import expect, sync_playwright

    prefect_port = up.prefect_port
    ui = f"http://127.0.0.1:{prefect_port}"

    def tag_sync_deployment() -> dict | None:
        try:
            found = requests.get(f"{up.api}/deployments/name/tag-sync/daily", timeout=5)
        except requests.RequestException:
            return None
        return found.json() if found.status_code == 200 else None

    deployment = up.wait_for(tag_sync_deployment, 180, "the tag-sync deployment served")
    browser_path = ensure_chromium()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(browser_path),
            headless=True,
            args=[flag for flag in CHROMIUM_FLAGS if flag != "--headless"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            # The way ops go: Deployments -> the deployment -> Run -> Custom run; the form's
            # address is the deployment's /run page.
            page.goto(f"{ui}/deployments", wait_until="networkidle")
            page.get_by_text("tag-sync").first.wait_for(timeout=60_000)
            page.goto(f"{ui}/deployments/deployment/{deployment['id']}/run")
            page.get_by_text("dry_run (Optional)").wait_for(timeout=60_000)
            # Every parameter of the flow is a plain field with its description.
            for field in ("export_file", "dry_run", "business_date", "row_failure_threshold"):
                assert page.get_by_text(f"{field} (Optional)").is_visible()
            assert page.get_by_text("send and store nothing").is_visible()

            run_name = page.locator("input[type=text]").first
            run_name.fill(RUN_NAME)
            expect(run_name).to_have_value(RUN_NAME)
            # The dry_run field's switch (the only switch among the parameters).
            dry_run = page.locator(".schema-form-property", has_text="dry_run").locator(
                "[role=switch]"
            )
            expect(dry_run).to_have_attribute("aria-checked", "false")
            dry_run.click()
            expect(dry_run).to_have_attribute("aria-checked", "true")
            page.get_by_role("button", name="Submit").click()

            # Submitting creates the run (the UI says "... scheduled to start now").
            def submitted() -> str | None:
                return _run_named(up.api, deployment["id"], RUN_NAME)

            deadline = time.monotonic() + 60
            while not submitted() and time.monotonic() < deadline:
                page.wait_for_timeout(1000)
            if not submitted():
                shot = tmp_path / "submit.png"
                page.screenshot(path=str(shot), full_page=True)
                pytest.fail(f"the Run form made no run within 60 s; the page: {shot}")
            flow_run_id = submitted()
            # (the toast's "View run" link goes there; the toast slides, so open it directly)
            page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
            page.get_by_text(RUN_NAME).first.wait_for(timeout=60_000)
            run = requests.get(f"{up.api}/flow_runs/{flow_run_id}", timeout=5).json()
            assert run["parameters"]["dry_run"] is True
            assert run["deployment_id"] == deployment["id"]

            final = up.wait_for(
                lambda: flow_run_state(up.api, flow_run_id), 300, "the dry tag-sync to end"
            )
            assert final["type"] == "COMPLETED", final.get("message")

            artifacts = _artifacts(up.api, flow_run_id)
            reports = [a for a in artifacts if a["type"] == "markdown"]
            assert reports, f"the run made no markdown artifact: {artifacts}"
            report = "\n".join(a["data"] for a in reports)
            assert "dry run" in report.lower()

            # And ops read it where they are: the artifact's page in the UI.
            report_artifact = next(a for a in reports if "dry run" in a["data"].lower())
            page.goto(f"{ui}/artifacts/artifact/{report_artifact['id']}")
            page.get_by_text(re.compile("dry run", re.IGNORECASE)).first.wait_for(timeout=60_000)
            shot = Path(tempfile.mkdtemp(prefix="siyu-browser-check-")) / "run-artifacts.png"
            page.screenshot(path=str(shot), full_page=True)
            with capsys.disabled():
                print(f"\nscreenshot of the dry run's artifacts in the Prefect UI: {shot}")
        finally:
            browser.close()
    up.interrupt_and_check_all_gone()
