"""The fabriek command line: argument handling and messages (no cluster is started)."""

from __future__ import annotations

import pytest

from serving.cli import build_parser, main


def test_serve_defaults_to_the_shipped_config():
    args = build_parser().parse_args(["serve"])
    assert args.config is None and args.http_port is None


def test_config_check_reports_a_valid_config(capsys):
    assert main(["config", "check"]) == 0
    assert "valid (1 model(s), 1 pool(s))" in capsys.readouterr().out


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
