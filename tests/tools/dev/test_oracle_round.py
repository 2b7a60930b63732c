"""tools/dev/oracle_round.py refuses a bad config or ``--checkpoint`` before it creates its
output folder: a mistake writes nothing."""

from __future__ import annotations

from pathlib import Path

import oracle_round  # tools/dev (tests/conftest.py)
import pytest


def test_bad_checkpoint_argument_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "oracle"
    with pytest.raises(SystemExit) as e:
        oracle_round.main(["--out", str(out), "--checkpoint", f"x={tmp_path / 'missing.pth'}"])
    assert e.value.code == 2 and "expected NAME=PATH" in capsys.readouterr().err
    assert not out.exists()


def test_bad_config_key_is_one_line_and_writes_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "oracle"
    with pytest.raises(SystemExit) as e:
        oracle_round.main(["--out", str(out), "CYBORGS.NO_SUCH_KEY", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "CYBORGS.NO_SUCH_KEY" in err and "Traceback" not in err
    assert not out.exists()


def test_a_checkpoint_cannot_take_the_oracles_name(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(b"")
    out = tmp_path / "oracle"
    with pytest.raises(SystemExit) as e:
        oracle_round.main(["--out", str(out), "--checkpoint", f"oracle={ckpt}"])
    assert e.value.code == 2 and "is taken" in capsys.readouterr().err
    assert not out.exists()
