"""The fabriek command line: argument handling and messages (no cluster is started)."""

from __future__ import annotations

import pytest

from serving.cli import build_parser, main


def test_serve_defaults_to_the_shipped_config():
    args = build_parser().parse_args(["serve"])
    assert args.config is None and args.http_port is None and args.grpc_port is None
    assert build_parser().parse_args(["serve", "--grpc-port", "9100"]).grpc_port == 9100


def test_config_check_reports_a_valid_config(capsys):
    assert main(["config", "check"]) == 0
    assert "valid (2 model(s), 3 pool(s))" in capsys.readouterr().out


def test_config_check_names_the_problem_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: []\npools: []\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fabriek: error: ") and "models: List should have at least 1 item" in err


def test_ray_env_prints_exports_for_the_serve_runtime(capsys):
    assert main(["config", "ray-env"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "export RAY_SERVE_ENABLE_HA_PROXY=1" in out
    assert "export RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in out


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["deploy"])
    assert raised.value.code == 2


def _config_with_key_file(tmp_path):
    import yaml

    from serving.config import DEFAULT_CONFIG_PATH

    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["auth"]["key_file"] = str(tmp_path / "{domain}-keys.json")
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_keys_create_list_revoke(tmp_path, capsys):
    config = str(_config_with_key_file(tmp_path))
    assert main(["keys", "create", "--tenant", "gov-demo", "--config", config]) == 0
    key = capsys.readouterr().out.splitlines()[-1]
    assert key.startswith("fk_")
    key_id = key.split("_")[1]
    assert main(["keys", "list", "--config", config]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "gov-demo" in listing and "active" in listing
    assert key.split("_", 2)[2] not in listing
    assert main(["keys", "revoke", key_id, "--config", config]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--config", config]) == 0
    assert "revoked" in capsys.readouterr().out


def test_keys_create_refuses_a_tenant_the_config_does_not_name(tmp_path, capsys):
    config = str(_config_with_key_file(tmp_path))
    assert main(["keys", "create", "--tenant", "mallory", "--config", config]) == 2
    assert "unknown tenant 'mallory'" in capsys.readouterr().err
    assert not list(tmp_path.glob("*keys.json"))


def test_keys_revoke_of_an_unknown_id_exits_2(tmp_path, capsys):
    config = str(_config_with_key_file(tmp_path))
    assert main(["keys", "revoke", "ffffffffffff", "--config", config]) == 2
    assert "no key with id" in capsys.readouterr().err


def test_config_check_prints_the_isolation_domains(capsys):
    assert main(["config", "check"]) == 0
    captured = capsys.readouterr()
    assert "  government: classes government; pools government" in captured.out
    assert "  commercial: classes commercial; pools commercial" in captured.out
    assert "warning" not in captured.err


def test_config_check_warns_when_government_shares_a_domain_with_commercial(tmp_path, capsys):
    import yaml

    from serving.config import DEFAULT_CONFIG_PATH

    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["classes"]["commercial"]["pools"] = ["commercial", "government"]  # one shared pool
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "check", str(path)]) == 0
    captured = capsys.readouterr()
    assert "  commercial-government: classes commercial, government; pools government, government-embeddings, commercial" in captured.out
    assert "domain 'commercial-government' holds both government and commercial tenants" in captured.err


def test_keys_go_only_into_the_tenants_own_domain_file(tmp_path, capsys):
    config = str(_config_with_key_file(tmp_path))
    assert main(["keys", "create", "--tenant", "gov-demo", "--config", config]) == 0
    assert main(["keys", "create", "--tenant", "pilot-demo", "--config", config]) == 0
    gov_key, pilot_key = (line for line in capsys.readouterr().out.splitlines() if line.startswith("fk_"))
    government, commercial = ((tmp_path / f"{d}-keys.json").read_text() for d in ("government", "commercial"))
    assert gov_key.split("_")[1] in government and gov_key.split("_")[1] not in commercial
    assert pilot_key.split("_")[1] in commercial and pilot_key.split("_")[1] not in government
    assert '"pilot-demo"' not in government and '"gov-demo"' not in commercial
    assert main(["keys", "list", "--config", config]) == 0
    listing = capsys.readouterr().out
    assert "government" in listing and "commercial" in listing
    # Revoking finds the key in whichever domain holds it.
    assert main(["keys", "revoke", pilot_key.split("_")[1], "--config", config]) == 0
    import json

    [record] = json.loads((tmp_path / "commercial-keys.json").read_text())["keys"]
    assert record["revoked_at"] is not None


def test_one_key_file_for_two_domains_is_refused(tmp_path, capsys):
    import yaml

    from serving.config import DEFAULT_CONFIG_PATH

    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["auth"]["key_file"] = str(tmp_path / "keys.json")
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "check", str(path)]) == 2
    assert "auth.key_file: 2 isolation domains (government, commercial) would share one file" in capsys.readouterr().err


def test_config_check_warns_that_the_python_proxy_is_shared_by_domains(tmp_path, capsys):
    import yaml

    from serving.config import DEFAULT_CONFIG_PATH

    config = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    config["serve"]["proxy"] = "ray"
    path = tmp_path / "ray-proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["config", "check", str(path)]) == 0
    assert "serve.proxy `ray` puts every domain's requests through Ray's one Python proxy" in capsys.readouterr().err


def test_usage_columns_stay_aligned_at_any_name_length_and_made_up_models_are_one_row(tmp_path, monkeypatch, capsys):
    from serving.config import load_config
    from serving.records.ledger import OK, REJECTED, RequestEnd, RequestStart, UsageLedger

    monkeypatch.setenv("FABRIEK_HOME", str(tmp_path))
    monkeypatch.delenv("FABRIEK_USAGE_DATABASE_URL", raising=False)
    ledger = UsageLedger(load_config(None, check_library_settings=False).ledger.resolved_url("government"))
    tenant = "gov-demo"
    ledger.record(RequestStart("a", tenant, "government", "government", "smollm2-135m-instruct", "http"),
                  RequestEnd(OK, 200, prompt_tokens=12, completion_tokens=7))
    # A hostile client's made-up model names: long, and many of them.
    for n in range(5):
        ledger.record(RequestStart(f"r{n}", tenant, "government", "government", f"made-up-{n}-" + "x" * 80, "http"),
                      RequestEnd(REJECTED, 404, reason="unknown_model"))
    ledger.close()

    assert main(["usage"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2, rows
    assert rows[0].split() == [tenant, "(unknown", "models)", REJECTED, "5", "0", "0", "-"]
    assert rows[1].split() == [tenant, "smollm2-135m-instruct", OK, "1", "12", "7", "-"]
    # Every column starts under its header, and the numbers end under theirs.
    for title in ("MODEL", "STATUS"):
        assert {row[header.index(title) - 2:header.index(title)] for row in rows} == {"  "}
    assert all(len(row) == len(header) for row in rows)


def test_power_status_keeps_long_pool_names_apart_from_their_class():
    from serving.cli import describe_power_status

    status = {"caps": [{"name": "platform-government-share", "watts": 1234.0, "until": None, "binding": True,
                        "from_config": False, "pools": ["government", "government-embeddings"]}],
              "pools": {"government-embeddings": {"tenant_class": "government", "watts": 12.5, "running": 3,
                                                  "limit": 8, "max_running": 64, "floor": 1}},
              "unmetered": []}
    lines = describe_power_status(status).splitlines()
    assert lines[1].split() == ["platform-government-share", "1234", "-", "yes", "cli", "government,government-embeddings"]
    assert lines[-1].split() == ["government-embeddings", "government", "12.5", "3", "8", "64", "1"]
