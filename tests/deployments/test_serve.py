"""One list of deployments: serve() and prefect.yaml are both made from the table in specs.py."""

from __future__ import annotations

from pathlib import Path

import yaml

from siyu.deployments import serve, specs

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_is_what_the_table_generates() -> None:
    written = (REPO / "prefect.yaml").read_text()

    assert written == specs.prefect_yaml(), (
        "prefect.yaml is stale: run `python -m siyu.deployments.specs > prefect.yaml`"
    )


def test_prefect_yaml_and_serve_describe_the_same_deployments() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    # By entrypoint: deployment names repeat across flows (tag-sync/daily, path-enroll/daily).
    declared = {d["entrypoint"]: d for d in config["deployments"]}

    served = serve.deployments()

    assert len(declared) == len(served) == len(specs.DEPLOYMENTS)
    for runner in served:
        spec = declared[runner.entrypoint]
        assert spec["entrypoint"] == runner.entrypoint
        assert spec["description"] == runner.description
        assert spec["tags"] == runner.tags
        assert spec["concurrency_limit"] == runner.concurrency_limit
        assert spec["parameters"] == runner.parameters
        assert [
            (s["cron"], s["timezone"], s.get("parameters", {}), s["active"])
            for s in spec["schedules"]
        ] == [
            (s.schedule.cron, s.schedule.timezone, s.parameters, s.active) for s in runner.schedules
        ]
        assert spec["work_pool"]["name"] == "siyu"
    assert config["pull"] == []


def test_every_entry_names_its_flow_and_runs_on_beijing_time() -> None:
    for spec in specs.DEPLOYMENTS:
        assert spec.load_flow().name == spec.flow_name
        assert all(s.timezone == "Asia/Shanghai" for s in spec.schedules)
    assert serve.DEPLOYMENT_NAMES == (
        serve.TAG_SYNC_DAILY,
        serve.CONTACTS_SYNC_HOURLY,
        "sends-track/every-15-minutes",
        "path-enroll/daily",
        "path-touch/cohort-touch",
        "group-cadence/weekly",
        "activity-winners/on-demand",
        "join-hook/daily",
        "rewards-settle/daily",
        "group-health/daily",
        "weekly-report/monday",
        "housekeeping/daily",
        "ops-alerts/every-5-minutes",
        # every manual action of ops, a Run form each
        "touch-rerun/on-demand",
        "message-cancel/on-demand",
        "path-pause/on-demand",
        "path-resume/on-demand",
        "cadence-pause/on-demand",
        "cadence-resume/on-demand",
        "payout-resend/on-demand",
        "tracking-rerun/on-demand",
    )


def test_worker_runs_beat_at_the_pace_the_crash_detection_expects() -> None:
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())

    for deployment in config["deployments"]:
        env = deployment["work_pool"]["job_variables"]["env"]
        assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(specs.HEARTBEAT_SECONDS)


def test_a_new_deployment_is_one_entry(monkeypatch) -> None:
    extra = specs.DeploymentSpec(
        flow_name="contacts-sync",
        name="nightly",
        entrypoint="siyu.flows.contacts_sync.contacts_sync",
        description="An extra run at night.",
        tags=("siyu", "contacts-sync"),
        schedules=(specs.ScheduleSpec(cron="30 2 * * *", parameters={}, slug="night"),),
    )
    monkeypatch.setattr(serve, "DEPLOYMENTS", (*specs.DEPLOYMENTS, extra))

    served = {d.name for d in serve.deployments()}
    generated = yaml.safe_load(specs.prefect_yaml((*specs.DEPLOYMENTS, extra)))

    assert "nightly" in served
    assert [d["name"] for d in generated["deployments"]][-1] == "nightly"
    assert generated["deployments"][-1]["schedules"][0]["slug"] == "night"
