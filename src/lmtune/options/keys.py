"""``--help``'s table of config keys, read from an options dataclass: one line per key,
its default, and the docstring written under the field. Sections (fields that are
dataclasses themselves) are listed after the flat keys as ``section.key``."""

from __future__ import annotations

import ast
import dataclasses
import inspect

from lmtune.options.training import key_fields


def _field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """Field name -> (default as written in the source, the docstring below it); a subclass's
    definition of a key (``lmtune.options.training``'s recipes) wins over its base's."""
    out: dict[str, tuple[str, str]] = {}
    for kls in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        out.update(_own_field_docs(kls))
    return out


def _own_field_docs(cls: type) -> dict[str, tuple[str, str]]:
    body = ast.parse(inspect.getsource(cls)).body[0].body  # type: ignore[attr-defined]
    out: dict[str, tuple[str, str]] = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        default = ast.unparse(node.value) if node.value is not None else ""
        if isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "field":  # field(default=X, metadata=after(...))
            given = {k.arg: k.value for k in node.value.keywords}
            default = ast.unparse(given["default"]) if "default" in given else f"{ast.unparse(given['default_factory'])}()" if "default_factory" in given else ""
        doc = ""
        following = body[i + 1] if i + 1 < len(body) else None
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            doc = " ".join(following.value.value.split())
        out[node.target.id] = (default, doc)
    return out


def describe_keys(cls: type, prefix: str = "") -> str:
    docs = _field_docs(cls)
    lines: list[str] = []
    sections: list[tuple[str, type]] = []
    for f in key_fields(cls):
        kind: object = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            sections.append((f.name, kind))
            continue
        default, doc = docs.get(f.name, ("", ""))
        lines.append(f"  {prefix}{f.name} = {default}" + (f"  # {doc}" if doc else ""))
    for name, kind in sections:
        lines.append(describe_keys(kind, f"{prefix}{name}."))
    return "\n".join(lines)
