"""cyborgs.config_io: config files are read as safe YAML, bounded, with detectron2's ``_BASE_``.

Each bad file is built here from the failure it stands for: a Python tag that would create a
marker file when loaded by detectron2's ``merge_from_file`` (checked once, so the payload is
known to be live), the same tag only in a ``_BASE_``, a few hundred bytes of nested aliases,
a base cycle, a missing base. ``_BASE_`` semantics are compared with detectron2's own
``load_yaml_with_base`` (the reference) on safe files and on every config of the repository.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest
from detectron2.config import CfgNode, get_cfg

from cyborgs.config_io import (
    MAX_ALIAS_NODES,
    ConfigFileError,
    load_yaml_config,
    merge_config_file,
    parse_yaml_text,
)
from cyborgs.transfer.config import add_transfer_config
from cyborgs.transfer.setup import get_transfer_cfg

REPO = Path(__file__).resolve().parents[1]
CONFIG_IO = REPO / "cyborgs" / "config_io.py"


def tag_payload(marker: Path) -> str:
    """A value that creates ``marker`` when an unsafe loader constructs it."""
    return f'!!python/object/apply:builtins.open ["{marker}", "w"]'


def alias_bomb(levels: int = 9) -> str:
    """The classic: each level is 9 aliases of the one before (9**levels strings)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_tag_payload_is_live_in_detectron2s_loader(tmp_path: Path) -> None:
    # what train_net did before: detectron2's merge_from_file falls back to unsafe_load
    marker = tmp_path / "marker"
    cfg_file = _write(tmp_path / "evil.yaml", f"SEED: {tag_payload(marker)}\n")
    try:
        get_cfg().merge_from_file(str(cfg_file))
    except Exception:
        pass  # the value is not an int; the code ran before that
    assert marker.exists()


@pytest.mark.parametrize("where", ["file", "base", "base of a base"])
def test_python_tag_is_refused_in_the_file_and_its_bases(tmp_path: Path, where: str) -> None:
    marker = tmp_path / "marker"
    evil = f"MODEL:\n  DEVICE: {tag_payload(marker)}\n"
    top = tmp_path / "top.yaml"
    if where == "file":
        _write(top, evil)
        named = top
    elif where == "base":
        named = _write(tmp_path / "bases" / "evil.yaml", evil)
        _write(top, "_BASE_: bases/evil.yaml\nSEED: 1\n")
    else:
        named = _write(tmp_path / "evil.yaml", evil)
        _write(tmp_path / "mid.yaml", '_BASE_: "evil.yaml"\n')
        _write(top, "_BASE_: [mid.yaml]\n")
    for load in (
        lambda: load_yaml_config(top),
        lambda: merge_config_file(get_cfg(), top),
        lambda: get_transfer_cfg(str(top)),
    ):
        with pytest.raises(ConfigFileError) as e:
            load()
        msg = str(e.value)
        assert msg.startswith(f"{named}: line 2, column 11: ") and "\n" not in msg, msg
        assert "!!python/object/apply:builtins.open is not allowed" in msg
    assert not marker.exists()


def test_other_tags_and_non_config_values_are_refused(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.yaml", "A: !!binary aGVsbG8=\n")
    with pytest.raises(ConfigFileError, match=r"c\.yaml: A: a bytes is not a config value"):
        load_yaml_config(f)
    _write(f, "A:\n  WHEN: 2024-01-31\n")  # YAML reads a date; yacs has no such type
    with pytest.raises(ConfigFileError, match=r"A\.WHEN: a date is not a config value"):
        load_yaml_config(f)
    _write(f, "A: !custom 3\n")
    with pytest.raises(ConfigFileError, match=r"tag !custom is not allowed"):
        load_yaml_config(f)
    _write(f, "- 1\n- 2\n")
    with pytest.raises(ConfigFileError, match=r"expected a mapping of config keys .* got a list"):
        load_yaml_config(f)
    _write(f, "A: [1\n")
    with pytest.raises(ConfigFileError, match=r"c\.yaml: line \d+, column \d+: not valid YAML"):
        load_yaml_config(f)
    _write(f, "")
    assert load_yaml_config(f) == {}


def test_alias_bomb_fails_at_once(tmp_path: Path) -> None:
    # 9**6 strings: over the budget, yet small enough not to hurt if the budget were gone (the
    # full-size bomb runs under a memory limit in the next test)
    text = alias_bomb(levels=6)
    f = _write(tmp_path / "bomb.yaml", text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigFileError, match=r"bomb\.yaml: line \d+.*aliases expand to more"):
        load_yaml_config(f)
    with pytest.raises(ConfigFileError, match=r"aliases expand to more"):
        merge_config_file(get_cfg(), f)
    with pytest.raises(ConfigFileError, match=r"saved\.yaml: .*aliases expand to more"):
        parse_yaml_text(text, "saved.yaml")
    assert time.perf_counter() - t0 < 1.0
    # a mapping bomb (CfgNode would copy each nested mapping) and an alias of its own value
    maps = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
    maps += [f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(9)) + "}"
             for i in range(1, 5)]  # fmt: skip
    _write(f, "\n".join(maps) + "\n")
    with pytest.raises(ConfigFileError, match=r"aliases expand to more"):
        load_yaml_config(f)
    _write(f, "A: &a [1, *a]\n")
    with pytest.raises(ConfigFileError, match=r"alias \*a is used inside its own value"):
        load_yaml_config(f)


def test_alias_bomb_under_a_memory_limit(tmp_path: Path) -> None:
    """The module alone (it needs only yaml at import) in a process limited to 1 GiB of address
    space: the bomb is refused within seconds, not by running out of memory."""
    text = alias_bomb()  # 9**9 strings in 550 bytes
    assert len(text.encode()) < 600
    f = _write(tmp_path / "bomb.yaml", text)
    script = (
        "import importlib.util, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        f"spec = importlib.util.spec_from_file_location('config_io', {str(CONFIG_IO)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "try:\n"
        f"    m.load_yaml_config({str(f)!r})\n"
        "except m.ConfigFileError as e:\n"
        "    print(e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "aliases expand to more than" in res.stdout


def test_aliases_within_the_budget_load_and_share_nothing(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "a.yaml",
        "X: &sizes [640, 672, 704]\nY: *sizes\nBASE: &b {LR: 0.1, STEPS: [1, 2]}\n"
        "OTHER:\n  <<: *b\n  LR: 0.2\n",
    )
    d = load_yaml_config(f)
    assert d == {"X": [640, 672, 704], "Y": [640, 672, 704], "BASE": {"LR": 0.1, "STEPS": [1, 2]},
                 "OTHER": {"LR": 0.2, "STEPS": [1, 2]}}  # fmt: skip
    d["X"].append(1)
    d["BASE"]["STEPS"].append(3)
    assert d["Y"] == [640, 672, 704] and d["OTHER"]["STEPS"] == [1, 2]
    # just under the budget: one list of MAX_ALIAS_NODES - 1 items aliased once
    n = MAX_ALIAS_NODES - 1
    _write(f, "A: &a [" + ", ".join(["0"] * n) + "]\nB: *a\n")
    assert len(load_yaml_config(f)["B"]) == n


def test_base_cycle_is_refused_naming_the_chain(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", "_BASE_: sub/b.yaml\n")
    b = _write(tmp_path / "sub" / "b.yaml", "_BASE_: ../a.yaml\n")
    with pytest.raises(ConfigFileError) as e:
        load_yaml_config(a)
    assert str(e.value) == f"{b}: _BASE_ cycle: {a} -> {b} -> {b.parent / '../a.yaml'}"
    own = _write(tmp_path / "self.yaml", "_BASE_: [self.yaml]\n")
    with pytest.raises(ConfigFileError, match=r"self\.yaml: _BASE_ cycle: .*self\.yaml -> "):
        load_yaml_config(own)
    # the same base twice (a diamond) is no cycle
    _write(tmp_path / "common.yaml", "A: 1\nB: 1\n")
    _write(tmp_path / "l.yaml", "_BASE_: common.yaml\nA: 2\n")
    _write(tmp_path / "r.yaml", "_BASE_: common.yaml\nB: 3\n")
    top = _write(tmp_path / "top.yaml", "_BASE_: [l.yaml, r.yaml]\n")
    assert load_yaml_config(top) == {"A": 1, "B": 3} == CfgNode.load_yaml_with_base(str(top))


def test_missing_base_is_named(tmp_path: Path) -> None:
    top = _write(tmp_path / "top.yaml", "_BASE_: ['ok.yaml', 'gone.yaml']\n")
    _write(tmp_path / "ok.yaml", "A: 1\n")
    with pytest.raises(ConfigFileError) as e:
        load_yaml_config(top)
    assert (
        str(e.value) == f"{top}: _BASE_ gone.yaml not found (looked for {tmp_path / 'gone.yaml'})"
    )
    with pytest.raises(ConfigFileError, match=r"nope\.yaml: no such file"):
        load_yaml_config(tmp_path / "nope.yaml")
    _write(top, "_BASE_: https://example.com/base.yaml\n")
    with pytest.raises(ConfigFileError, match=r"remote configs are not fetched"):
        load_yaml_config(top)
    _write(top, "_BASE_: 3\n")
    with pytest.raises(ConfigFileError, match=r"_BASE_ must be a file name or a list"):
        load_yaml_config(top)


def test_base_semantics_match_detectron2(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    _write(home / "h.yaml", "H: {X: 1, Y: [1, 2]}\nK: home\n")
    _write(tmp_path / "abs.yaml", "ABS: 1\nK: abs\n")
    _write(tmp_path / "d" / "b1.yaml", "_BASE_: ~/h.yaml\nH: {Y: [3]}\nK: b1\nL: b1\n")
    _write(tmp_path / "d" / "b2.yaml", f"_BASE_: {tmp_path / 'abs.yaml'}\nK: b2\nH: {{Z: 2}}\n")
    # a list of bases, later over earlier, relative to the including file, then the file over them
    top = _write(tmp_path / "d" / "top.yaml", "_BASE_: [b1.yaml, b2.yaml]\nL: top\nH: {X: 9}\n")
    ours = load_yaml_config(top)
    assert ours == CfgNode.load_yaml_with_base(str(top))
    assert ours == {"H": {"X": 9, "Y": [3], "Z": 2}, "K": "b2", "L": "top", "ABS": 1}
    # a mapping over a value of the base: detectron2 asserts, we name the file and the key
    bad = _write(tmp_path / "d" / "bad.yaml", "_BASE_: b1.yaml\nK: {A: 1}\n")
    with pytest.raises(AssertionError):
        CfgNode.load_yaml_with_base(str(bad))
    with pytest.raises(ConfigFileError, match=r"bad\.yaml: K is a mapping here but 'b1'"):
        load_yaml_config(bad)


def test_every_repository_config_loads_as_detectron2_loads_it() -> None:
    files = sorted(REPO.glob("pretrain_configs/**/*.yaml")) + sorted(
        REPO.glob("transfer_configs/*.yaml")
    )
    assert len(files) > 20
    for f in files:
        assert load_yaml_config(f) == CfgNode.load_yaml_with_base(str(f)), f
    demo = REPO / "transfer_configs" / "demo_voc_det_C4.yaml"
    theirs = add_transfer_config(get_cfg())
    theirs.merge_from_file(str(demo))
    assert get_transfer_cfg(str(demo)) == theirs


# Calls that read YAML (or merge a config file) on their own; only cyborgs/config_io.py may.
_FORBIDDEN = {"merge_from_file", "load_yaml_with_base", "safe_load", "load", "unsafe_load",
              "full_load", "load_all", "safe_load_all", "unsafe_load_all", "full_load_all",
              "load_cfg"}  # fmt: skip


def test_nothing_else_reads_yaml() -> None:
    found = []
    for path in sorted([*REPO.glob("cyborgs/**/*.py"), *REPO.glob("tools/**/*.py")]):
        if path == REPO / "cyborgs" / "config_io.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            attr, owner = node.func.attr, node.func.value
            owner_name = owner.id if isinstance(owner, ast.Name) else ""
            if attr in {"merge_from_file", "load_yaml_with_base", "load_cfg"} or (
                owner_name == "yaml" and attr in _FORBIDDEN
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {attr}")
        if "import yaml" in path.read_text() or "from yaml" in path.read_text():
            found.append(f"{path.relative_to(REPO)}: imports yaml")
    assert not found, found
