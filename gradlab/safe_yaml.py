r"""Reading YAML safely: `yaml.SafeLoader` (no Python objects) that also refuses, in time
linear in the text, alias bombs ("billion laughs"), recursive aliases, nesting deeper than
Python's recursion limit and values Python cannot build, each as a `YAMLRefusedError`.

>>> safe_load("tasks: &t [sst, sts]\neda_tasks: *t")
{'tasks': ['sst', 'sts'], 'eda_tasks': ['sst', 'sts']}
"""

from __future__ import annotations

from typing import Any

import yaml

#: nodes a YAML text may expand to once its aliases are resolved (a config has a few hundred)
MAX_YAML_NODES = 100_000


class YAMLRefusedError(ValueError):
    """A YAML text whose aliases expand past `MAX_YAML_NODES` (a "billion laughs" bomb),
    that refers to itself, that is nested too deeply, or that holds a value Python cannot
    build (an integer of more than 4300 digits, the date 2020-13-45)."""


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses, in time linear in the text, a document whose nested
    aliases expand to more than `MAX_YAML_NODES` nodes, a recursive alias, and nesting
    deeper than Python's recursion limit (`YAMLRefusedError`)."""
    loader = _BoundedLoader(text)  # what yaml.load does, with a SafeLoader subclass
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YAMLRefusedError("the YAML is nested too deeply") from None
    except (ValueError, OverflowError) as err:
        if isinstance(err, YAMLRefusedError):
            raise
        raise YAMLRefusedError(f"a value cannot be read: {' '.join(str(err).split())}"
                               ) from None
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of ``root`` with every alias expanded (memoised per node, so a bomb is
    measured without being expanded)."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        children = _children(node)
        if done:
            open_nodes.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise YAMLRefusedError(
                    f"its aliases expand to more than {MAX_YAML_NODES} values (nested "
                    "aliases, a 'billion laughs' text?)")
            continue
        if id(node) in size:
            continue
        if id(node) in open_nodes:
            raise YAMLRefusedError("an alias refers to the value that contains it")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


__all__ = ["MAX_YAML_NODES", "YAMLRefusedError", "safe_load"]
