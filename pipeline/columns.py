"""A JSON schema → the Arrow type of its column, and each reply value → what that column stores.

The mapping is decided by the schema alone, at every depth, so a column's type is the same for every
row (and when every row failed):

=========================================  =====================================================
schema                                     column
=========================================  =====================================================
``string``, an enum/const of strings       string
``integer``                                int64 (JSON text if its declared bounds exceed int64)
``number``                                 float64
``boolean``                                bool
``array`` with ``items``                   list of the items' column
``object`` with ``properties``             struct of its properties
``["T", "null"]``, ``anyOf [T, null]``     T (nullable)
anything else                              JSON text
=========================================  =====================================================

*Anything else* is a value with no single Arrow type: a union of types (``["integer", "string"]``,
``anyOf``/``oneOf`` whose branches map differently), a free-form value (no ``type``, ``{}``, an
object without ``properties``, an array without ``items``), ``allOf`` combinations, recursive
``$ref`` s. Such a column is a string holding ``json.dumps`` of the value (``json.loads`` gives it
back exactly); a JSON ``null`` is stored as null. Local ``$ref`` s (``#/$defs/...``) are followed.

An ``integer`` without bounds is int64; a reply whose value does not fit (beyond ±2⁶³) cannot be
stored and is reported by :meth:`Column.convert` as a ``ValueError`` — the reply is then invalid,
like one that fails the schema, and kept raw in ``reply``. A schema that declares bounds beyond
int64 (``"maximum": 1e30``) gets a JSON-text column instead, so such values are kept exactly.

Example::

    >>> column = column_for({"type": "array", "items": {"type": ["integer", "string"]}})
    >>> column.arrow, column.convert([1, "b"])
    (ListType(list<item: string>), ['1', '"b"'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import pyarrow as pa

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
SHAPING = {"type", "properties", "items", "prefixItems", "anyOf", "oneOf", "allOf", "enum", "const"}
SCALARS = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}


@dataclass(frozen=True)
class Column:
    """How values of one (sub)schema are stored: ``kind`` is a JSON type of :data:`SCALARS`,
    ``array``, ``object`` or ``json`` (JSON text)."""

    kind: str
    item: "Column | None" = None
    fields: tuple[tuple[str, "Column"], ...] = ()

    @property
    def arrow(self) -> pa.DataType:
        if self.kind == "array":
            return pa.list_(self.item.arrow)
        if self.kind == "object":
            return pa.struct([pa.field(name, column.arrow) for name, column in self.fields])
        return SCALARS.get(self.kind, pa.string())

    def convert(self, value: Any) -> Any:
        """The value as its Arrow column takes it; :class:`Unstorable` (a ValueError) when it cannot be."""
        if value is None:
            return None
        kind = self.kind
        if kind == "json":
            text = json.dumps(value, ensure_ascii=False)
            return text if _utf8(text) else json.dumps(value)  # a lone surrogate: keep it escaped
        if kind == "string" and isinstance(value, str):
            if not _utf8(value):
                raise Unstorable(f"{json.dumps(value)[:80]} holds a lone surrogate, which UTF-8 cannot store")
            return value
        if kind == "boolean" and isinstance(value, bool):
            return value
        if kind == "integer":
            return _to_int64(value)
        if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise Unstorable(f"{value} is too large for a float64 column") from None
        if kind == "array" and isinstance(value, list):
            return [_at(self.item, item, position) for position, item in enumerate(value)]
        if kind == "object" and isinstance(value, dict):
            return {name: _at(column, value.get(name), name) for name, column in self.fields}
        raise Unstorable(f"{json.dumps(value)[:80]} is not a value of a {kind} column")


JSON_TEXT = Column("json")


class Unstorable(ValueError):
    """A value its column cannot hold; ``path`` says where it is in the reply."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason, self.path = reason, []

    def __str__(self) -> str:
        return f"{'/'.join(map(str, self.path))}: {self.reason}" if self.path else self.reason


def _at(column: Column, value: Any, where: str | int) -> Any:
    try:
        return column.convert(value)
    except Unstorable as exc:
        exc.path.insert(0, where)
        raise


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _to_int64(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Unstorable(f"{json.dumps(value)[:80]} is not an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise Unstorable(f"{value} does not fit a 64-bit integer column (give the property a 'maximum' "
                         "beyond int64 to keep such values as JSON text)")
    return value


def column_for(schema: Any, root: Mapping[str, Any] | None = None) -> Column:
    """The column for values of ``schema``; ``root`` is the document its ``$ref`` s point into."""
    return _column(schema, root if root is not None else schema, ())


def _column(schema: Any, root: Any, refs: tuple[str, ...]) -> Column:
    if not isinstance(schema, dict):
        return JSON_TEXT  # true / false schemas
    if "$ref" in schema:
        return _referenced(schema, root, refs)
    branches = [b for key in ("anyOf", "oneOf") for b in schema.get(key) or () if not _only_null(b)]
    if "allOf" in schema:
        if len(schema["allOf"]) == 1 and not (SHAPING - {"allOf"}) & schema.keys():
            return _column(schema["allOf"][0], root, refs)
        if _own_type(schema) not in SCALARS:
            return JSON_TEXT  # an intersection: its shape is not one schema's
    own = _own(schema, root, refs)
    if not branches:
        return own or JSON_TEXT
    if own is None and {"properties", "items", "prefixItems"} & schema.keys():
        return JSON_TEXT  # shape spread over the node and its branches
    candidates = {_column(branch, root, refs) for branch in branches} | ({own} if own else set())
    return candidates.pop() if len(candidates) == 1 else JSON_TEXT


def _referenced(schema: dict, root: Any, refs: tuple[str, ...]) -> Column:
    ref = schema["$ref"]
    if ref in refs or SHAPING & schema.keys():
        return JSON_TEXT  # recursive, or combined with more than the reference
    target = _resolve(root, ref)
    return JSON_TEXT if target is None else _column(target, root, (*refs, ref))


def _resolve(root: Any, ref: str) -> Any:
    """A local JSON pointer (``#``, ``#/$defs/name``) into ``root``; None for anything else."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _own_type(schema: dict) -> str | None:
    """The one non-null JSON type ``type`` names; None when it names none; "" when several."""
    kind = schema.get("type")
    kinds = [k for k in ([kind] if isinstance(kind, str) else kind or []) if k != "null"]
    return (kinds[0] if len(kinds) == 1 else "") if kinds else None


def _own(schema: dict, root: Any, refs: tuple[str, ...]) -> Column | None:
    """The column of the schema's own ``type`` (or enum/const values); None when it has none."""
    kind = _own_type(schema)
    if kind is None:
        kind = _values_type(schema)
        if kind is None:
            return None
    if kind == "integer" and not _bounds_fit_int64(schema):
        return JSON_TEXT
    if kind in SCALARS:
        return Column(kind)
    if kind == "array":
        items = schema.get("items")
        if items is None or "prefixItems" in schema:
            return JSON_TEXT if "prefixItems" in schema else Column("array", JSON_TEXT)
        return Column("array", _column(items, root, refs))
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or not properties:
            return JSON_TEXT
        return Column("object", fields=tuple((name, _column(sub, root, refs)) for name, sub in properties.items()))
    return JSON_TEXT  # several types, or only null


def _values_type(schema: dict) -> str | None:
    """The JSON type shared by every non-null enum/const value; "" when they differ; None without any."""
    if "const" in schema:
        values = [schema["const"]]
    elif isinstance(schema.get("enum"), list):
        values = schema["enum"]
    else:
        return None
    kinds = {_json_type(v) for v in values if v is not None}
    if kinds == {"integer", "number"}:
        return "number"
    return kinds.pop() if len(kinds) == 1 else ""


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "")


def _bounds_fit_int64(schema: dict) -> bool:
    """False when the schema itself allows integers beyond int64 (declared bounds or enum values)."""
    bounds = [schema.get(k) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")]
    bounds += [v for v in (schema.get("enum") or []) if _json_type(v) in ("integer", "number")]
    if "const" in schema and _json_type(schema["const"]) in ("integer", "number"):
        bounds.append(schema["const"])
    return all(INT64_MIN <= b <= INT64_MAX for b in bounds
               if isinstance(b, (int, float)) and not isinstance(b, bool))


def _only_null(schema: Any) -> bool:
    return isinstance(schema, dict) and (schema.get("type") == "null" or schema.get("type") == ["null"]
                                         or schema.get("const", 0) is None or schema.get("enum") == [None])
