"""Reading config files: the one YAML loader behind every config the suite reads.

Config files are passed around between people, so reading one must never run code or exhaust
the machine, and a bad one must fail with one message that names it:

* safe YAML only, in the file and in every ``_BASE_`` it names: plain mappings, lists, strings,
  numbers, booleans and null. A Python tag (``!!python/object/apply:...``), which detectron2's
  ``merge_from_file`` would hand to ``yaml.unsafe_load``, is refused, as is any other value
  a config cannot hold (dates, binary, sets);
* aliases (``*name``) are expanded at most :data:`MAX_ALIAS_NODES` nodes per file, so a few
  hundred bytes of nested aliases (a "billion laughs") fail at once instead of growing to
  gigabytes downstream; the result shares no objects between keys;
* ``_BASE_`` as in detectron2 (``fvcore.common.config.CfgNode.load_yaml_with_base``): a path
  relative to the including file (``~`` and absolute paths allowed) or a list of them, merged in
  order, the including file over its bases, nested bases allowed; a mapping in a file over a
  non-mapping in its base is an error. Unlike detectron2, an ``http(s)://`` base is refused (a
  config is not fetched from the network), a base that includes itself (a cycle) is refused
  naming the chain, and an empty file is an empty mapping.

Every failure is a :class:`ConfigFileError` whose message starts with the file it is about.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
from typing import Any

import yaml

__all__ = [
    "BASE_KEY",
    "MAX_ALIAS_NODES",
    "MAX_BASE_DEPTH",
    "ConfigFileError",
    "load_yaml_config",
    "merge_config_file",
    "parse_yaml_text",
]

BASE_KEY = "_BASE_"
# Nodes one file may expand through aliases. The suite's configs use no aliases; a hand-written
# config that reuses a few lists stays far below, an alias bomb exceeds it within a few levels.
MAX_ALIAS_NODES = 10_000
# Files in one chain of nested bases; the suite's own chains are a few files long.
MAX_BASE_DEPTH = 32

_SCALARS = (str, int, float, bool, type(None))


class ConfigFileError(ValueError):
    """A config file that cannot be used; ``str(e)`` is ``"<file>: <what is wrong>"``."""

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        super().__init__(f"{os.fspath(path)}: {what}")
        self.path = os.fspath(path)
        self.what = what

    def __reduce__(self):  # keeps both fields across processes
        return (type(self), (self.path, self.what))


class _AliasBudgetError(Exception):
    def __init__(self, mark: yaml.Mark, detail: str) -> None:
        super().__init__(detail)
        self.mark = mark


class _BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts the nodes each alias stands for (an anchored node's size
    with its own aliases expanded) and stops past :data:`MAX_ALIAS_NODES`; an alias inside the
    node it names (a cycle) is refused. PyYAML builds an aliased object once and shares it, so the
    bomb is cheap here: it is whoever walks the result (a copy, a repr, a merge) who pays."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._alias_nodes = 0
        self._open: set[str] = set()  # anchors whose node is being composed
        self._sizes: dict[int, int] = {}  # id(node) -> size with its aliases expanded

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _AliasBudgetError(
                    event.start_mark, f"alias *{event.anchor} is used inside its own value"
                )
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is left to PyYAML's own error
                self._alias_nodes += self._size(node)
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise _AliasBudgetError(
                        event.start_mark,
                        f"aliases expand to more than {MAX_ALIAS_NODES} values (at *{event.anchor}"
                        "): refusing what looks like an alias bomb; write the values out",
                    )
            return super().compose_node(parent, index)
        if event.anchor is None:
            return super().compose_node(parent, index)
        self._open.add(event.anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open.discard(event.anchor)

    def _size(self, node: yaml.Node) -> int:
        key = id(node)
        if key in self._sizes:
            return self._sizes[key]
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size = 1 + sum(self._size(c) for c in children)
        self._sizes[key] = size
        return size


def _mark(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:") :] if tag.startswith("tag:yaml.org,2002:") else tag


def _parse(path: str) -> Any:
    """The YAML document in ``path``, read with :class:`_BoundedSafeLoader`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except IsADirectoryError:
        raise ConfigFileError(path, "is a directory, not a YAML file") from None
    except FileNotFoundError:
        raise ConfigFileError(path, "no such file") from None
    except UnicodeDecodeError as e:
        raise ConfigFileError(
            path, f"not a UTF-8 text file ({e.reason} at byte {e.start})"
        ) from None
    except OSError as e:
        raise ConfigFileError(path, f"cannot be read ({e.strerror or e})") from None
    return _parse_text(text, path)


def _parse_text(text: str, path: str) -> Any:
    loader = _BoundedSafeLoader(text)
    try:
        return loader.get_single_data()
    except _AliasBudgetError as e:
        raise ConfigFileError(path, _mark(e.mark) + str(e)) from None
    except yaml.constructor.ConstructorError as e:
        m = re.search(r"constructor for the tag '([^']*)'", e.problem or "")
        if m:
            tag = _short_tag(m.group(1))
            what = f"tag {tag} is not allowed: config files are plain YAML"
            if "python/" in tag:
                what += " (a Python tag would run code when loaded)"
        else:
            what = e.problem or str(e)
        raise ConfigFileError(path, _mark(e.problem_mark) + what) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigFileError(path, f"{_mark(mark)}not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigFileError(path, "nested too deeply to be a config") from None
    finally:
        loader.dispose()


def _plain(value: Any, path: str, key: str) -> Any:
    """A fresh copy of ``value`` (no object shared between keys, as the aliases left them),
    with every value checked to be one a config can hold."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, _SCALARS):
                raise ConfigFileError(
                    path,
                    f"{key or 'the top level'}: a key must be a plain value, got a {type(k).__name__}",
                )
            out[k] = _plain(v, path, f"{key}.{k}" if key else str(k))
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, path, key) for v in value]
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, datetime.date):  # YAML reads 2024-01-31 as a date
        raise ConfigFileError(path, f"{key}: a date is not a config value (quote it)")
    raise ConfigFileError(path, f"{key}: a {type(value).__name__} is not a config value")


def _merge_into(a: dict, b: dict, path: str, prefix: str = "") -> None:
    """Merge ``a`` (a file) into ``b`` (its bases) in place, ``a`` winning: detectron2's rule."""
    for k, v in a.items():
        if isinstance(v, dict) and k in b:
            if not isinstance(b[k], dict):
                raise ConfigFileError(
                    path, f"{prefix}{k} is a mapping here but {b[k]!r} in its _BASE_"
                )
            _merge_into(v, b[k], path, f"{prefix}{k}.")
        else:
            b[k] = v


def _base_path(base: Any, including: str) -> str:
    if not isinstance(base, str) or not base:
        raise ConfigFileError(
            including, f"{BASE_KEY} must be a file name or a list of them, got {base!r}"
        )
    if base.startswith(("https://", "http://")):
        raise ConfigFileError(
            including,
            f"{BASE_KEY} {base}: remote configs are not fetched; download it and "
            "name the local file",
        )
    if base.startswith("~"):
        base = os.path.expanduser(base)
    if not base.startswith("/"):
        base = os.path.join(os.path.dirname(including), base)
    return base


def _load(path: str, chain: list[tuple[str, str]]) -> dict:
    data = _parse(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(
            path, f"expected a mapping of config keys at the top, got a {type(data).__name__}"
        )
    own = _plain(data, path, "")
    bases = own.pop(BASE_KEY, None)
    if bases is None and BASE_KEY not in data:
        merged = own
    else:
        if len(chain) >= MAX_BASE_DEPTH:
            raise ConfigFileError(path, f"more than {MAX_BASE_DEPTH} nested {BASE_KEY} files")
        merged = {}
        for base in bases if isinstance(bases, list) else [bases]:
            base_file = _base_path(base, path)
            real = os.path.realpath(base_file)
            seen = [r for _, r in chain]
            if real in seen:
                names = [p for p, _ in chain[seen.index(real) :]] + [base_file]
                raise ConfigFileError(path, f"{BASE_KEY} cycle: {' -> '.join(names)}")
            if not os.path.exists(base_file):
                raise ConfigFileError(path, f"{BASE_KEY} {base} not found (looked for {base_file})")
            _merge_into(_load(base_file, [*chain, (base_file, real)]), merged, path)
        _merge_into(own, merged, path)
    return merged


def load_yaml_config(path: str | os.PathLike) -> dict:
    """The config in ``path`` as a plain dict, its ``_BASE_`` chain merged (module docstring).

    Args:
        path: the YAML file.

    Raises:
        ConfigFileError: naming the file (or the including file, for a base that is missing
            or part of a cycle) and what is wrong.
    """
    path = os.fspath(path)
    try:
        return _load(path, [(path, os.path.realpath(path))])
    except RecursionError:  # values nested thousands deep
        raise ConfigFileError(path, "nested too deeply to be a config") from None


def parse_yaml_text(text: str, name: str) -> Any:
    """One YAML document from a string (e.g. a run's saved ``config.yaml``), under the rules
    of :func:`load_yaml_config` except ``_BASE_``, which is an ordinary key here; ``name``
    is the file the text came from, for the error message."""
    try:
        return _plain(_parse_text(text, name), name, "")
    except RecursionError:
        raise ConfigFileError(name, "nested too deeply to be a config") from None


def merge_config_file(cfg, path: str | os.PathLike) -> None:
    """Merge the config in ``path`` into the detectron2 ``CfgNode`` ``cfg``: detectron2's
    ``cfg.merge_from_file(path)`` (``VERSION`` check, older versions upgraded), read with
    :func:`load_yaml_config` instead of a loader that may fall back to ``yaml.unsafe_load``."""
    from detectron2.config import CfgNode
    from detectron2.config.compat import guess_version, upgrade_config

    path = os.fspath(path)
    loaded = load_yaml_config(path)
    try:
        loaded_cfg = CfgNode(loaded)
    except AssertionError as e:  # yacs: a value type it does not take
        raise ConfigFileError(path, str(e)) from None
    version = loaded_cfg.get("VERSION", None)
    if version is None:
        version = guess_version(loaded_cfg, path)
    if not isinstance(version, int) or isinstance(version, bool) or version > cfg.VERSION:
        raise ConfigFileError(
            path, f"VERSION {version!r}: expected a detectron2 config version up to {cfg.VERSION}"
        )
    if version == cfg.VERSION:
        cfg.merge_from_other_cfg(loaded_cfg)
        return
    from detectron2.config.compat import downgrade_config

    logging.getLogger(__name__).warning(
        "Loading an old v%s config file '%s' by automatically upgrading to v%s.",
        version, path, cfg.VERSION,
    )  # fmt: skip
    old = downgrade_config(cfg, to_version=version)
    old.merge_from_other_cfg(loaded_cfg)
    new = upgrade_config(old)
    cfg.clear()
    cfg.update(new)
