"""A schema as users write it → the schema OpenAI's strict Structured Outputs accepts, meaning the same.

Strict mode (``response_format.json_schema.strict = true``, chatbatch's default) refuses with a 400,
on every request, a schema that leaves any object open or any property optional. A plain JSON schema
is therefore rewritten before anything is sent (:func:`strict_schema`):

* every object gets ``additionalProperties: false`` and lists every property in ``required``;
* a property the user did not require is made nullable (``"type": ["string", "null"]``, or
  ``anyOf [..., {"type": "null"}]``), so the model can still leave it out — by answering null;
* ``oneOf`` is sent as ``anyOf``, a ``$ref`` with siblings as ``anyOf [{"$ref"}]``, an ``enum`` or
  ``const`` without ``type`` gets the type of its values, and the annotations ``default`` and
  ``$schema`` are left out;
* constraints strict mode does not take (``minLength``, ``maxLength``, ``minProperties``,
  ``maxProperties``, ``uniqueItems``, ``contains``, ``minContains``, ``maxContains``,
  ``propertyNames``, a ``format`` other than those listed in :data:`FORMATS`) are moved into the
  ``description``, as a hint to the model.

Replies are still validated against the schema as the user wrote it (:func:`optional_nullable`
only lets an optional property come back null, meaning absent), so nothing the user asked for is
lost. What cannot be expressed is refused before sending with :class:`Incompatible`, naming the
keyword and where it is: ``allOf``, ``not``, ``if``/``then``/``else``, ``dependentRequired``,
``dependentSchemas``, ``patternProperties``, ``unevaluatedProperties``, ``unevaluatedItems``,
``prefixItems``, an open object (``additionalProperties`` other than false, or no ``properties``),
an array without ``items``, a value without a type (``{}``), ``anyOf`` at the root, a ``required``
name with no property, and schemas beyond OpenAI's documented size limits (:data:`MAX_PROPERTIES`
properties, :data:`MAX_DEPTH` levels of objects, :data:`MAX_ENUM_VALUES` enum values,
:data:`MAX_STRING_CHARS` characters of names and enum/const strings). Source: OpenAI's Structured
Outputs guide, "Supported schemas".
"""

from __future__ import annotations

import json
from typing import Any, Mapping

REFUSED = {
    "allOf": "strict mode cannot combine schemas with allOf",
    "not": "strict mode does not support 'not'",
    "if": "strict mode does not support conditional schemas",
    "then": "strict mode does not support conditional schemas",
    "else": "strict mode does not support conditional schemas",
    "dependentRequired": "strict mode requires every property, so dependencies cannot be expressed",
    "dependentSchemas": "strict mode does not support dependent schemas",
    "patternProperties": "strict mode allows no properties beyond 'properties'",
    "unevaluatedProperties": "strict mode does not support unevaluatedProperties",
    "unevaluatedItems": "strict mode does not support unevaluatedItems",
    "prefixItems": "strict mode does not support tuples (prefixItems)",
}
HINTS = ("minLength", "maxLength", "minProperties", "maxProperties", "uniqueItems", "contains", "minContains",
         "maxContains", "propertyNames")
FORMATS = {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
DROPPED = ("default", "$schema")
MAX_PROPERTIES, MAX_DEPTH, MAX_ENUM_VALUES, MAX_STRING_CHARS = 5000, 10, 1000, 120_000
ADVICE = ("set strict = false to send the schema as it is (not enforced by the API), or "
          "structured_mode = \"json_object\"")


class Incompatible(ValueError):
    """A schema strict mode cannot take: ``keyword`` at ``pointer`` (``#/properties/x``), and why."""

    def __init__(self, keyword: str, path: tuple, reason: str) -> None:
        self.keyword, self.pointer, self.reason = keyword, "/".join(map(str, path)), reason
        super().__init__(f"'{keyword}' at {self.pointer}: {reason}")


def strict_schema(schema: Mapping[str, Any]) -> dict:
    """A strict-mode copy of ``schema`` (an object schema); raises :class:`Incompatible`."""
    for union in ("anyOf", "oneOf"):
        if union in schema:
            raise Incompatible(union, ("#",), "the root must be an object, not a union")
    walker = _Walker()
    result = walker.node(schema, ("#",), 0)
    walker.check_limits()
    return result


def optional_nullable(schema: Any) -> Any:
    """``schema`` where every optional property may also be null: how replies are validated."""
    if isinstance(schema, list):
        return [optional_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas") \
                and isinstance(value, dict):
            value = {name: optional_nullable(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems",
                     "unevaluatedProperties", "unevaluatedItems", "contains", "then", "else"):
            value = optional_nullable(value)
        out[key] = value
    required = set(out.get("required") or ())
    if isinstance(out.get("properties"), dict):
        out["properties"] = {name: sub if name in required else nullable(sub)
                             for name, sub in out["properties"].items()}
    return out


def nullable(schema: Any) -> Any:
    """``schema`` that also accepts null."""
    if not isinstance(schema, dict) or allows_null(schema):
        return schema
    kind = schema.get("type")
    if kind is not None and not {"enum", "const", "anyOf", "oneOf", "allOf", "$ref"} & schema.keys():
        return {**schema, "type": [*([kind] if isinstance(kind, str) else kind), "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def allows_null(schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    return (kind == "null" or (isinstance(kind, list) and "null" in kind)
            or ("enum" in schema and None in schema["enum"]) or ("const" in schema and schema["const"] is None)
            or any(isinstance(b, dict) and allows_null(b) for b in schema.get("anyOf") or ()))


class _Walker:
    """One pass over a schema, rewriting it for strict mode and counting what the limits count."""

    def __init__(self) -> None:
        self.properties = self.enum_values = self.string_chars = 0

    def node(self, schema: Any, path: tuple, depth: int) -> dict:
        if not isinstance(schema, dict):
            raise Incompatible(json.dumps(schema), path, "a true/false schema has no type; strict mode needs one")
        refused = next((key for key in schema if key in REFUSED), None)
        if refused is not None:
            raise Incompatible(refused, path, REFUSED[refused])
        out = {key: value for key, value in schema.items() if key not in DROPPED}
        self._hints(out)
        self._count_values(out)
        self._unions(out, path, depth)
        for key in ("$defs", "definitions"):
            if isinstance(out.get(key), dict):
                self.string_chars += sum(map(len, out[key]))
                out[key] = {name: self.node(sub, (*path, key, name), depth) for name, sub in out[key].items()}
        if "type" not in out and not {"anyOf", "$ref"} & out.keys():
            out["type"] = _values_type(out, path)
        kinds = [out["type"]] if isinstance(out.get("type"), str) else out.get("type") or []
        if "object" in kinds:
            self._object(out, path, depth + 1)
        if "array" in kinds:
            if not isinstance(out.get("items"), dict):
                raise Incompatible("items", path, "an array needs 'items' (a schema of its elements) in strict mode")
            out["items"] = self.node(out["items"], (*path, "items"), depth)
        return out

    def _unions(self, out: dict, path: tuple, depth: int) -> None:
        if "oneOf" in out:
            if "anyOf" in out:
                raise Incompatible("oneOf", path, "strict mode takes anyOf or oneOf, not both")
            out["anyOf"] = out.pop("oneOf")
        if "$ref" in out and len(out) > 1:
            if "anyOf" in out:
                raise Incompatible("$ref", path, "strict mode takes no $ref beside anyOf")
            out["anyOf"] = [{"$ref": out.pop("$ref")}]
        if "anyOf" in out:
            out["anyOf"] = [self.node(branch, (*path, "anyOf", i), depth) for i, branch in enumerate(out["anyOf"])]

    def _object(self, out: dict, path: tuple, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise Incompatible("properties", path, f"strict mode allows at most {MAX_DEPTH} levels of nested objects")
        additional = out.get("additionalProperties")
        if additional not in (None, False):
            raise Incompatible("additionalProperties", path,
                               "strict mode allows no properties beyond 'properties'; remove it or set it to false")
        properties = out.get("properties") or {}
        if not properties and additional is not False:
            raise Incompatible("properties", path, "an object without properties (free-form) cannot be "
                                                   "described in strict mode; list its properties")
        required = list(out.get("required") or ())
        unknown = [name for name in required if name not in properties]
        if unknown:
            raise Incompatible("required", path, f"names {unknown[0]!r}, which is not among 'properties'")
        self.properties += len(properties)
        self.string_chars += sum(map(len, properties))
        converted = {}
        for name, sub in properties.items():
            sub = self.node(sub, (*path, "properties", name), depth)
            converted[name] = sub if name in required else nullable(sub)
        out["properties"] = converted
        out["required"] = list(properties)
        out["additionalProperties"] = False

    def _hints(self, out: dict) -> None:
        moved = [key for key in HINTS if key in out]
        if "format" in out and out["format"] not in FORMATS:
            moved.append("format")
        if moved:
            notes = ", ".join(f"{key}: {json.dumps(out.pop(key))}" for key in moved)
            out["description"] = f"{out['description']} ({notes})" if out.get("description") else notes

    def _count_values(self, out: dict) -> None:
        values = list(out.get("enum") or ()) + ([out["const"]] if "const" in out else [])
        self.enum_values += len(out.get("enum") or ())
        self.string_chars += sum(len(v) for v in values if isinstance(v, str))

    def check_limits(self) -> None:
        for count, limit, what in ((self.properties, MAX_PROPERTIES, "object properties"),
                                   (self.enum_values, MAX_ENUM_VALUES, "enum values"),
                                   (self.string_chars, MAX_STRING_CHARS,
                                    "characters of property names, definition names and enum/const strings")):
            if count > limit:
                raise Incompatible("properties" if what == "object properties" else "enum", ("#",),
                                   f"the schema has {count:,} {what}; strict mode allows at most {limit:,}")


def _values_type(out: dict, path: tuple) -> str | list[str]:
    """The ``type`` of an enum/const without one (strict mode needs it); refuses a free-form value."""
    if "const" in out:
        values = [out["const"]]
    elif isinstance(out.get("enum"), list):
        values = out["enum"]
    else:
        raise Incompatible("type", path, "missing: a value of any type (free-form) cannot be described in "
                                         "strict mode; give it a type, or list its properties")
    names = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
             list: "array", dict: "object"}
    kinds = sorted({names.get(type(v), "string") for v in values})
    if {"integer", "number"} <= set(kinds):
        kinds.remove("integer")
    return kinds[0] if len(kinds) == 1 else kinds
