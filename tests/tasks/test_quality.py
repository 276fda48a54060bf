"""Tests for the export quality gate: each broken export blocks on exactly its own check."""

from __future__ import annotations

import itertools
import re
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from siyu.sandbox.export_files import write_export
from siyu.schemas.export import DEFAULT_BRANCHES
from siyu.schemas.export_suite import CHECKS, ROW_CHECKS, SuiteContext, build_export_suite
from siyu.tasks import quality
from siyu.tasks.export import LoadProblem, load_export
from siyu.tasks.quality import mask_customer_id, run_gate
from tests.bad_exports import (
    BAD_MOBILE_ROWS,
    CORPUS_EXPECTED_FAILURES,
    CORPUS_PREVIOUS_ROW_COUNT,
    NEGATIVE_AUM_ROWS,
    bad_export_corpus,
    good_frame,
)

EXPORT_DATE = date(2026, 11, 24)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> dict:
    """The value profile of the export every corpus case breaks: the last accepted one."""
    good = write_export(
        good_frame(1000, export_date=EXPORT_DATE, seed=3),
        tmp_path_factory.mktemp("good") / "core_export_20261124.csv",
    )
    gate = run_gate(
        load_export(good),
        expected_date=EXPORT_DATE,
        previous_row_count=None,
        branches=DEFAULT_BRANCHES,
    )
    assert gate.passed, gate.message
    return gate.profile


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, baseline):
    out = tmp_path_factory.mktemp("corpus")
    files = bad_export_corpus(out, export_date=EXPORT_DATE)
    results = {
        name: run_gate(
            load_export(path),
            expected_date=EXPORT_DATE,
            previous_row_count=CORPUS_PREVIOUS_ROW_COUNT[name],
            branches=DEFAULT_BRANCHES,
            previous_profile=baseline,
        )
        for name, path in files.items()
    }
    return files, results


def _personal_values(files) -> set[str]:
    """Every mobile and name the corpus was built from (all cases share one base frame)."""
    base = good_frame(1000, export_date=EXPORT_DATE, seed=3)
    return set(base["mobile"]) | set(base["name"])


def _assert_clean(text: str, personal: set[str]) -> None:
    leaked = [value for value in personal if value and value in text]
    assert not leaked, f"personal data in output: {len(leaked)} values"


def test_mask_customer_id():
    assert mask_customer_id("C0000000042") == "C****0042"
    assert mask_customer_id("  C0000000042 ") == "C****0042"
    assert mask_customer_id("0042") == "****42"  # a short id shows less, never all of it


def test_good_export_passes_every_check(tmp_path):
    text = good_frame(300, export_date=EXPORT_DATE)
    gate = run_gate(
        load_export(write_export(text, tmp_path / "core_export_20261124.csv")),
        expected_date=EXPORT_DATE,
        previous_row_count=290,
        branches=DEFAULT_BRANCHES,
    )
    assert gate.passed
    assert [c.name for c in gate.checks] == [c.name for c in CHECKS]
    assert all(c.passed and c.failed_count == 0 and c.sample == [] for c in gate.checks)
    assert len(gate.accepted) == 300 and len(gate.quarantined) == 0
    assert not [c for c in gate.accepted.columns if c.startswith("_")]
    assert gate.message.startswith("export 2026-11-24 passed")
    assert gate.data_docs is None


@pytest.mark.parametrize("case", sorted(CORPUS_EXPECTED_FAILURES))
def test_each_corpus_case_fails_exactly_its_checks(corpus, case):
    files, results = corpus
    gate = results[case]
    failed = {c.name for c in gate.checks if not c.passed}

    assert failed == CORPUS_EXPECTED_FAILURES[case]
    assert gate.passed is (case == "quarantine_small")
    if not gate.passed:
        assert gate.accepted.empty
        assert gate.message.startswith("export 2026-11-24 failed")
        assert gate.message.endswith("fix the export and rerun tag-sync")
    _assert_clean(gate.message, _personal_values(files))
    for check in gate.checks:
        _assert_clean(f"{check}", _personal_values(files))


def test_messages_name_failures_with_counts_and_masked_samples(corpus):
    _, results = corpus
    negative = results["negative_aum_2pct"]
    assert "20 rows with negative AUM (sample: C****0001, C****0051" in negative.message
    assert "2 %" in negative.message and "1 % threshold" in negative.message
    share = next(c for c in negative.checks if c.name == "quarantine_share")
    assert share.failed_count == 20 and len(share.sample) == 5

    duplicates = next(c for c in results["duplicate_ids"].checks if not c.passed)
    assert duplicates.failed_count == 6  # three ids, each on two rows
    assert duplicates.sample == ["C****0001", "C****0011", "C****0021"]
    assert "6 rows sharing a customer id" in results["duplicate_ids"].message

    garbage = next(c for c in results["type_garbage"].checks if not c.passed)
    assert garbage.failed_count == 3
    assert "aum 3" in results["type_garbage"].message
    assert "found 2026-11-23" in results["stale_date"].message
    assert "1,000 rows against 2,000" in results["volume_drop"].message
    assert "手机号 (mobile)" in results["missing_column"].message
    assert "line 1001" in results["truncated"].message


def test_small_quarantine_passes_with_its_rows_and_reasons(corpus):
    _, results = corpus
    gate = results["quarantine_small"]
    assert gate.passed
    assert gate.quarantined["row_number"].tolist() == BAD_MOBILE_ROWS
    assert set(gate.quarantined["reasons"]) == {"mobile_format"}
    assert gate.quarantined["customer_id"].tolist() == [
        f"C{3 * 10_000_000 + row + 1:010d}" for row in BAD_MOBILE_ROWS
    ]
    assert set(gate.quarantined.columns) == {"row_number", "customer_id", "reasons"}
    assert len(gate.accepted) == 995
    assert not set(gate.accepted.index) & set(BAD_MOBILE_ROWS)
    assert "5 rows quarantined (0.5 %)" in gate.message

    negative = results["negative_aum_2pct"]
    assert negative.quarantined["row_number"].tolist() == NEGATIVE_AUM_ROWS


def test_threshold_is_configurable(corpus):
    files, _ = corpus
    gate = run_gate(
        load_export(files["negative_aum_2pct"]),
        expected_date=EXPORT_DATE,
        previous_row_count=None,
        branches=DEFAULT_BRANCHES,
        row_failure_threshold=0.05,
    )
    assert gate.passed
    assert len(gate.accepted) == 980


def test_several_reasons_on_one_row(tmp_path):
    text = good_frame(200, export_date=EXPORT_DATE)
    text.loc[4, ["mobile", "branch_code", "customer_class", "aum_peak"]] = [
        "x",
        "BR999",
        "其他",
        "-1",
    ]
    gate = run_gate(
        load_export(write_export(text, tmp_path / "core_export_20261124.csv")),
        expected_date=EXPORT_DATE,
        previous_row_count=None,
        branches=DEFAULT_BRANCHES,
    )
    assert gate.passed
    assert gate.quarantined.to_dict("records") == [
        {
            "row_number": 4,
            "customer_id": text.loc[4, "customer_id"],
            "reasons": "mobile_format,aum_peak_non_negative,branch_known,class_known",
        }
    ]


def test_gx_counts_equal_the_row_masks(tmp_path):
    text = good_frame(400, export_date=EXPORT_DATE)
    text.loc[[1, 2, 3], "mobile"] = ["１３８００１３８０００", "13800138000\n", "12800138000"]
    text.loc[[4, 5], "customer_id"] = ["", "   "]
    text.loc[7, "customer_id"] = text.loc[6, "customer_id"]
    text.loc[[8, 9], "aum"] = ["-0.01", "oops"]
    text.loc[10, "aum_peak"] = "-5"
    text.loc[[11, 12], "branch_code"] = ["", "br001"]
    text.loc[13, "customer_class"] = "直营 "
    text.loc[[14, 15], "export_date"] = ["20261123", ""]
    text.loc[16, "holds_loan"] = "?"
    frame = load_export(write_export(text, tmp_path / "core_export_20261124.csv")).frame

    ctx = SuiteContext(EXPORT_DATE, DEFAULT_BRANCHES, (0, None))
    columns = quality._validation_columns(frame)
    masks = quality._masks(columns, ctx)
    outcomes, _ = quality._validate(quality._gx_frame(columns), build_export_suite(ctx), None)

    # Every check with a column rule: GX and the gate's mask read the same rule alike.
    ruled = [c for c in CHECKS if c.rule is not None and c.rule.column is not None]
    assert {c.name for c in ruled} == set(masks) >= {*ROW_CHECKS, "export_date_expected"}
    for check in ruled:
        assert outcomes[check.name][1] == int(masks[check.name].sum()), check.name
        # Row checks never fail the suite alone (the quarantine share decides); table ones do.
        expected = True if check.level == "row" else bool(masks[check.name].sum() == 0)
        assert outcomes[check.name][0] == expected, check.name
    assert masks["mobile_format"].sum() == 3
    assert masks["customer_id_not_null"].sum() == 2
    assert masks["customer_id_unique"].sum() == 2
    assert masks["branch_known"].sum() == 2
    assert masks["export_date_expected"].sum() == 2


def test_data_docs_hold_no_personal_data(tmp_path, corpus):
    files, _ = corpus
    docs = tmp_path / "docs"
    gate = run_gate(
        load_export(files["quarantine_small"]),
        expected_date=EXPORT_DATE,
        previous_row_count=1000,
        branches=DEFAULT_BRANCHES,
        docs_dir=docs,
    )
    assert gate.data_docs is not None and gate.data_docs.name == "index.html"
    assert gate.data_docs.is_file() and docs in gate.data_docs.parents
    written = [p for p in docs.rglob("*") if p.is_file()]
    assert any("validations" in str(p) for p in written)
    personal = _personal_values(files)
    for path in written:
        _assert_clean(path.read_bytes().decode("utf-8", errors="ignore"), personal)


@pytest.mark.parametrize(
    "ids, duplicated",
    [
        (["C03", "C01", "C02", None], []),  # not sorted, unique
        (["C01", None, "C02", "C03"], []),  # sorted around an empty id
        (["C01", "C02", None, "C02"], [1, 3]),  # sorted but for a repeat across an empty id
        (["C02", "C01", "C02", "C02"], [0, 2, 3]),
    ],
)
def test_id_codes_are_equal_exactly_where_ids_are(ids, duplicated):
    codes = quality._id_codes(pa.array(ids, pa.string()))
    assert [c < 0 for c in codes] == [i is None for i in ids]
    for a, b in itertools.combinations(range(len(ids)), 2):
        if ids[a] is not None and ids[b] is not None:
            assert (codes[a] == codes[b]) == (ids[a] == ids[b])
    frame = good_frame(len(ids), export_date=EXPORT_DATE)
    frame["customer_id"] = pd.array(ids, dtype="str")
    typed = frame.astype({"export_date": "datetime64[s]"})
    masks = quality._masks(
        quality._validation_columns(typed), SuiteContext(EXPORT_DATE, (), (0, None))
    )
    assert list(np.flatnonzero(masks["customer_id_unique"])) == duplicated


# Data Docs say what the gate decided, are kept as long as they are needed, and are linkable.


def _stored_validations(docs) -> list[dict]:
    import json

    return [
        json.loads(p.read_text())
        for p in docs.rglob("*.json")
        if "validations" in p.parts and "uncommitted" in p.parts
    ]


@pytest.mark.parametrize(
    "case", ["quarantine_small", "negative_aum_2pct", "duplicate_header", "flags_all_no"]
)
def test_data_docs_show_the_gates_checks_and_verdict(tmp_path, corpus, baseline, case):
    files, _ = corpus
    docs = tmp_path / "docs"
    gate = run_gate(
        load_export(files[case]),
        expected_date=EXPORT_DATE,
        previous_row_count=1000,
        branches=DEFAULT_BRANCHES,
        docs_dir=docs,
        previous_profile=baseline,
    )
    [stored] = _stored_validations(docs)
    assert stored["success"] is gate.passed, case
    by_check = {r["expectation_config"]["meta"]["siyu_check"]: r for r in stored["results"]}
    assert sorted(by_check) == sorted(c.name for c in gate.checks)
    for check in gate.checks:
        if check.level == "table":
            assert by_check[check.name]["success"] is check.passed, (case, check.name)
    [page] = [p for p in docs.rglob("*.html") if "validations" in p.parts]
    html = page.read_text(encoding="utf-8", errors="ignore")
    verdict = re.search(r"Status:</span>\s*<i[^>]*></i>\s*(Succeeded|Failed)", html).group(1)
    assert verdict == ("Succeeded" if gate.passed else "Failed"), case


def test_data_docs_link_is_relative_to_the_reports_dir_and_a_url_when_served(tmp_path):
    index = tmp_path / "reports" / "data-docs" / "export-3-abc" / "uncommitted" / "index.html"
    index.parent.mkdir(parents=True)
    index.write_text("")
    assert quality.data_docs_link(index, tmp_path / "reports", None) == (
        "data-docs/export-3-abc/uncommitted/index.html",
        None,
    )
    assert quality.data_docs_link(index, tmp_path / "reports", "https://ops.bank/siyu/")[1] == (
        "https://ops.bank/siyu/data-docs/export-3-abc/uncommitted/index.html"
    )


def test_old_data_docs_are_pruned_and_blocked_runs_kept(tmp_path):
    import json
    import os
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, tzinfo=UTC)
    root = tmp_path / "data-docs"
    ages = {"old-passed": 31, "old-blocked": 90, "recent-passed": 2, "old-unknown": 40}
    for name, days in ages.items():
        folder = root / name
        folder.mkdir(parents=True)
        if name != "old-unknown":
            verdict = {"passed": "passed" in name}
            (folder / quality.VERDICT_FILE).write_text(json.dumps(verdict))
        stamp = now.timestamp() - days * 86_400
        os.utime(folder, (stamp, stamp))

    removed = quality.prune_data_docs(root, keep_days=30, keep_blocked=True, now=now)
    assert sorted(p.name for p in removed) == ["old-passed", "old-unknown"]
    assert sorted(p.name for p in root.iterdir()) == ["old-blocked", "recent-passed"]
    quality.prune_data_docs(root, keep_days=30, keep_blocked=False, now=now)
    assert sorted(p.name for p in root.iterdir()) == ["recent-passed"]


def test_a_blocked_run_keeps_its_verdict_beside_its_data_docs(tmp_path, corpus):
    files, _ = corpus
    docs = tmp_path / "docs"
    gate = run_gate(
        load_export(files["wrong_encoding"]),
        expected_date=EXPORT_DATE,
        previous_row_count=None,
        branches=DEFAULT_BRANCHES,
        docs_dir=docs,
    )
    assert not gate.passed and gate.data_docs is not None
    [stored] = _stored_validations(docs)
    assert stored["success"] is False
    assert (
        docs / quality.VERDICT_FILE
    ).read_text() == '{"passed": false, "export_date": "2026-11-24"}'


# One registry: every check is phrased, levelled and reaches GX exactly once.


def test_the_registry_is_the_one_list_of_checks(tmp_path):
    names = [c.name for c in CHECKS]
    assert len(names) == len(set(names))
    assert set(ROW_CHECKS) == {c.name for c in CHECKS if c.level == "row"}
    assert all(c.rule is not None and c.rule.column for c in CHECKS if c.level == "row")
    decided = {c.name: (True, "") for c in CHECKS if c.rule is None}
    suite = build_export_suite(SuiteContext(EXPORT_DATE, DEFAULT_BRANCHES, (0, None)), decided)
    assert [e.meta["siyu_check"] for e in suite.expectations] == names
    with pytest.raises(KeyError, match="no quality check named"):
        LoadProblem("encodin", "a typo")


def test_the_profile_is_stored_with_an_accepted_export_and_read_as_the_next_baseline(
    tmp_path, baseline
):
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from siyu.schemas.database import make_engine, upgrade
    from siyu.schemas.models import Export

    url = f"sqlite:///{tmp_path / 'siyu.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        for status in ("synced", "blocked", "received"):
            conn.execute(
                sa.insert(Export).values(
                    file_name="core_export_20261124.csv",
                    checksum=status,
                    status=status,
                    created_at=datetime.now(UTC),
                )
            )
    assert quality.previous_profile(engine, 3) is None
    quality.store_profile(engine, 1, baseline)
    quality.store_profile(engine, 2, {"rows": 1, "columns": {}})  # blocked: never a baseline
    assert quality.previous_profile(engine, 3) == baseline
    engine.dispose()
