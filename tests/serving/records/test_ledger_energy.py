"""Energy in the usage ledger: joules per request, their sums per tenant with the number of
metered requests, ledgers created before the column existed, and `fabriek usage` in Wh."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, exc, inspect

from serving.cli import main
from serving.config import load_config
from serving.config.home import default_ledger_url
from serving.records.ledger import (ERROR, OK, REJECTED, RequestEnd, RequestStart, UsageLedger, _add_column,
                                    _add_missing_columns)
from tests.serving.records.test_ledger import start

# The table as fabriek wrote it before `energy_j`, with its indexes.
OLD_SCHEMA = """
CREATE TABLE usage_records (
    id INTEGER NOT NULL, request_id VARCHAR(64) NOT NULL, started_at FLOAT NOT NULL,
    finished_at FLOAT, tenant_id VARCHAR(128) NOT NULL, tenant_class VARCHAR(32) NOT NULL,
    pool VARCHAR(128), model VARCHAR(256), protocol VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL, status_code INTEGER, reason VARCHAR(64),
    reserved_tokens INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL, queue_ms FLOAT, ttft_ms FLOAT, latency_ms FLOAT,
    trace_id VARCHAR(32), PRIMARY KEY (id));
CREATE UNIQUE INDEX ix_usage_records_request_id ON usage_records (request_id);
CREATE INDEX ix_usage_records_started_at ON usage_records (started_at);
CREATE INDEX ix_usage_records_tenant_id ON usage_records (tenant_id);
CREATE INDEX ix_usage_records_status ON usage_records (status);
INSERT INTO usage_records (request_id, started_at, finished_at, tenant_id, tenant_class, pool,
    model, protocol, status, status_code, reserved_tokens, prompt_tokens, completion_tokens)
    VALUES ('old', 1000.0, 1001.0, 'gov', 'government', 'government', 'm', 'http', 'ok', 200,
    100, 10, 20);
"""


MODEL = "smollm2-135m-instruct"  # the default config's: known to `fabriek usage`


def _old_ledger_file(tmp_path) -> str:
    path = tmp_path / "usage.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(OLD_SCHEMA)
    connection.close()
    return str(path)


def test_energy_is_recorded_and_summed_with_the_metered_count(tmp_path):
    ledger = UsageLedger(default_ledger_url(tmp_path))
    ledger.start(start("a"), now=1000.0)
    ledger.finish("a", RequestEnd(OK, 200, completion_tokens=5, energy_j=1800.0), now=1001.0)
    ledger.record(start("b"), RequestEnd(OK, 200, energy_j=900.5))
    ledger.record(start("c"), RequestEnd(OK, 200))  # ran where no energy counter exists
    ledger.record(start("d"), RequestEnd(REJECTED, 429, reason="quota_exceeded"))
    ledger.record(start("e", "pilot"), RequestEnd(OK, 200))
    ledger.record(start("f", "pilot"), RequestEnd(ERROR, 500, energy_j=0.0))
    records = {r.request_id: r for r in ledger.records()}
    assert (records["a"].energy_j, records["b"].energy_j, records["c"].energy_j) == (1800.0, 900.5, None)
    totals = {(r["tenant_id"], r["status"]): r for r in ledger.totals()}
    gov_ok = totals[("gov", OK)]
    assert (gov_ok["requests"], gov_ok["metered_requests"], gov_ok["energy_j"]) == (3, 2, 2700.5)
    assert (totals[("gov", REJECTED)]["metered_requests"], totals[("gov", REJECTED)]["energy_j"]) == (0, None)
    # No record metered: None, not 0 J; a metered 0 J stays 0.
    assert (totals[("pilot", OK)]["metered_requests"], totals[("pilot", OK)]["energy_j"]) == (0, None)
    assert (totals[("pilot", ERROR)]["metered_requests"], totals[("pilot", ERROR)]["energy_j"]) == (1, 0.0)
    ledger.close()


def test_an_old_ledger_gets_the_energy_column(tmp_path):
    path = _old_ledger_file(tmp_path)
    ledger = UsageLedger(f"sqlite:///{path}")
    assert "energy_j" in {c["name"] for c in inspect(ledger._engine).get_columns("usage_records")}
    ledger.record(start("new"), RequestEnd(OK, 200, prompt_tokens=1, energy_j=36.0))
    records = {r.request_id: r for r in ledger.records()}
    assert (records["old"].prompt_tokens, records["old"].energy_j) == (10, None)
    assert records["new"].energy_j == 36.0
    [row] = ledger.totals()
    assert (row["requests"], row["prompt_tokens"], row["metered_requests"], row["energy_j"]) == (2, 11, 1, 36.0)
    ledger.close()
    # Opening it again finds the column and adds nothing.
    UsageLedger(f"sqlite:///{path}").close()


def test_a_column_another_process_added_first_is_no_error(tmp_path):
    # The race: another process's ALTER TABLE came between our look and ours.
    ledger = UsageLedger(f"sqlite:///{_old_ledger_file(tmp_path)}")
    _add_column(ledger._engine, "energy_j")  # the database refuses a duplicate column
    ledger.close()


def test_a_column_that_cannot_be_added_is_an_error(tmp_path):
    path = _old_ledger_file(tmp_path)
    read_only = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(exc.OperationalError, match="readonly"):
        _add_missing_columns(read_only)
    read_only.dispose()


def test_usage_prints_energy_in_wh(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FABRIEK_HOME", str(tmp_path))
    monkeypatch.delenv("FABRIEK_USAGE_DATABASE_URL", raising=False)
    ledger_config = load_config(None, check_library_settings=False).ledger

    def gov(request_id: str) -> RequestStart:
        return RequestStart(request_id, "gov-demo", "government", "government", MODEL, "http")

    government = UsageLedger(ledger_config.resolved_url("government"))
    government.record(gov("a"), RequestEnd(OK, 200, energy_j=43.2))  # 0.012 Wh
    government.record(gov("b"), RequestEnd(OK, 200))  # not measured
    government.record(gov("c"), RequestEnd(ERROR, 500, energy_j=3600.0))
    government.record(gov("d"), RequestEnd(REJECTED, 429, reason="quota_exceeded"))
    government.close()
    commercial = UsageLedger(ledger_config.resolved_url("commercial"))
    commercial.record(RequestStart("e", "pilot-demo", "commercial", "commercial", MODEL, "http"),
                      RequestEnd(OK, 200))
    commercial.close()

    assert main(["usage"]) == 0
    header, *rows, footnote = capsys.readouterr().out.splitlines()
    assert header.endswith("ENERGY Wh")
    energy = {tuple(row.split()[:3]): row.split()[-1] for row in rows}
    assert energy == {("gov-demo", MODEL, ERROR): "1.000", ("gov-demo", MODEL, OK): "0.012*",
                      ("gov-demo", MODEL, REJECTED): "-", ("pilot-demo", MODEL, OK): "-"}
    # The numbers end under the header's end; the mark stands after them.
    assert all(len(row.rstrip("*")) == len(header) for row in rows)
    assert footnote == "* some requests of this row ran where no energy counter exists (not measured)"
