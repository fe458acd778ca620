"""Reading config YAML: a safe loader that reads `1e-3` as a number (YAML 1.2), and one-line errors that name
the file or override and the position for a syntax error or a key given twice in one mapping."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import yaml


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that reads exponent floats without a dot (`1e-3`) as numbers, as YAML 1.2 does; PyYAML
    follows YAML 1.1 and would hand `optim.lr: 1e-3` over as the string '1e-3'."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str, where: str, *, key: str = "", column_offset: int = 0) -> Any:
    """`text` parsed with the config's YAML loader. A syntax error, or a key given twice in one mapping
    (PyYAML would keep the last silently), is a one-line ValueError naming `where` (a file or an override)
    and the position. For an override's value, `key` is its dotted key and `column_offset` the length of
    `key=`, so that positions and duplicate keys refer to the whole override."""
    loader = _YamlLoader(text)
    where_at = functools.partial(_position, where, column_offset=column_offset, one_line="\n" not in text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, where_at, key)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        problem = err.problem or err.context or "invalid YAML"
        raise ValueError(f"{where_at(err.problem_mark or err.context_mark)}: YAML error: {problem}") from None
    except yaml.YAMLError as err:  # unmarked errors (e.g. a control character in the stream)
        raise ValueError(f"{where}: YAML error: {' '.join(str(err).split())}") from None
    finally:
        loader.dispose()


def _position(where: str, mark: yaml.Mark | None, *, column_offset: int, one_line: bool) -> str:
    if mark is None:
        return where
    column = mark.column + 1 + (column_offset if mark.line == 0 else 0)
    return f"{where}, column {column}" if one_line else f"{where}, line {mark.line + 1}, column {column}"


def _check_duplicate_keys(node: yaml.Node, where_at: Callable[[yaml.Mark], str], path: str) -> None:
    """Walks the composed document (before construction, so that keys can be named by their dotted path)."""
    todo, visited = [(node, path)], set()
    while todo:
        node, path = todo.pop()
        if id(node) in visited:  # an alias points back at a node already walked
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{path}.{i}" if path else str(i)) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                dotted = f"{path}.{name}" if path else str(name)
                if name is not None and key_node.tag != "tag:yaml.org,2002:merge":
                    if name in first_line:
                        raise ValueError(
                            f"{where_at(key_node.start_mark)}: duplicate key '{dotted}' (first given on line "
                            f"{first_line[name]})"
                        )
                    first_line[name] = key_node.start_mark.line + 1
                todo.append((value_node, dotted))
