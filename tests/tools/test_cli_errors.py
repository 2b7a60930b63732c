"""tools/cli_errors.py: every tool that reads a config reports a mistake in it as one
``error:`` line (exit 2, where it came from, the closest key of *that* config), and a bug
keeps its traceback."""

from __future__ import annotations

from pathlib import Path

import bootstrap_masks  # tools/ (tests/conftest.py)
import pytest
import train_net
from cli_errors import UsageError, config_error_line

REPO = Path(__file__).resolve().parents[2]
VOC = str(REPO / "transfer_configs" / "demo_voc_det_C4.yaml")


def test_train_net_suggests_a_transfer_key(tmp_path, capsys) -> None:
    argv = ["--config-file", VOC, "TRANSFER.EVAL_BACKND", "x", "OUTPUT_DIR", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        train_net.cli(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err == (
        "error: Non-existent key: TRANSFER.EVAL_BACKND (from the command line); "
        "did you mean TRANSFER.EVAL_BACKEND?"
    )
    assert not (tmp_path / "o").exists()


def test_bootstrap_masks_bad_key_is_one_line(tmp_path, capsys) -> None:
    argv = ["--config-file", str(REPO / "pretrain_configs" / "demo_R18.yaml"), "--round", "1",
            "CYBORGS.BOOTSTRAP.K_MAXX", "8", "OUTPUT_DIR", str(tmp_path / "o")]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        bootstrap_masks.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "did you mean CYBORGS.BOOTSTRAP.K_MAX?" in err
    assert not (tmp_path / "o").exists()


def test_where_a_key_came_from_and_what_is_not_a_config_mistake() -> None:
    key_error = KeyError("Non-existent config key: SOLVER.BASE_LRR")
    assert "(from config file a.yaml)" in config_error_line(key_error, "a.yaml", ["X", "1"])
    assert "(from the command line)" in config_error_line(
        key_error, "a.yaml", ["SOLVER.BASE_LRR", "1"]
    )
    assert config_error_line(UsageError("OUTPUT_DIR is empty")) == "error: OUTPUT_DIR is empty"
    assert config_error_line(ValueError("shapes differ")) is None  # a bug: its traceback
    assert config_error_line(KeyError("model")) is None
