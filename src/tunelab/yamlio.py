"""YAML as every config the project reads is loaded: safe, and a key given twice is an error.

PyYAML keeps the last of two equal keys in a mapping without a word, so `lr: 1e-4` near the top of a file and
`lr: 3e-4` further down silently train with the second. `safe_load` raises `DuplicateKeyError` naming both
lines instead. Merge keys (`<<: *base`) may still be overridden: only a mapping's own keys are compared.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names a key twice; `line` is the second one (1-based)."""

    def __init__(self, key: Any, first: int, line: int) -> None:
        self.key, self.first, self.line = key, first, line
        super().__init__(f"duplicate key {key!r} (first at line {first}, again at line {line}); give it once")


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently).
    Merge keys (`<<: *base`) may still be overridden: only the mapping's own keys are compared."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """yaml.safe_load, but a duplicate key is an error (DuplicateKeyError, with both lines)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
