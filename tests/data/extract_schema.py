#!/usr/bin/env python3
"""Extract a self-contained JSON Schema for ``CreateChatCompletionRequest``.

Source: OpenAI's published OpenAPI 3.1 description, ``openapi.yaml`` from the
public repository openai/openai-openapi f85dbe22, 2026-08-21 (kept read-only in
this workspace as ``/work/shared/reference/openai-openapi.yaml``).

Usage::

    python tests/data/extract_schema.py /path/to/openai-openapi.yaml \
        [-o tests/data/create_chat_completion_request.schema.json] [--keep-nullable]

The output is a JSON Schema (draft 2020-12) document of the form::

    {"$schema": "https://json-schema.org/draft/2020-12/schema",
     "$ref": "#/$defs/CreateChatCompletionRequest",
     "$defs": {"CreateChatCompletionRequest": {...}, ...every schema it
               transitively references...}}

Transformations applied (everything else is copied verbatim):

* ``$ref: "#/components/schemas/X"`` is rewritten to ``"#/$defs/X"``.
* ``nullable: true`` (an OpenAPI 3.0 keyword that the spec still uses although
  it declares ``openapi: 3.1.0``; JSON Schema 2020-12 ignores it, so e.g.
  ``"max_completion_tokens": null`` would be rejected) is translated:
  ``type: T`` becomes ``type: [T, "null"]`` (and ``null`` is appended to an
  ``enum`` if present); a nullable node without ``type`` (``oneOf``-only, e.g.
  ``StopConfiguration``, ``prediction``) becomes
  ``{"anyOf": [<node>, {"type": "null"}]}``.  ``--keep-nullable`` disables this.
* The YAML is read with YAML 1.2 core-schema scalar resolution (only
  true/false are booleans, no timestamps), so values such as ``on``/``no`` or
  ``2025-01-01`` stay strings as in JSON.

Vendor keywords (``x-oaiTypeLabel``, ``x-stainless-const``, ``x-oaiMeta``,
``x-oaiExpandable``), OpenAPI's ``discriminator`` and ``example`` are kept;
2020-12 validators treat them as unknown annotations (``oneOf`` still does
the actual branch selection).
"""
from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = "CreateChatCompletionRequest"
PREFIX = "#/components/schemas/"
SOURCE = "openai/openai-openapi f85dbe22, 2026-08-21"

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Yaml12Loader(_Base):
    """Safe loader with YAML 1.2 core-schema implicit scalar types."""


Yaml12Loader.yaml_implicit_resolvers = {}
for _tag, _regex, _first in [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
     r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
]:
    Yaml12Loader.add_implicit_resolver(_tag, re.compile(_regex), list(_first))


def _construct_int(loader, node):
    v = loader.construct_scalar(node)
    if v.startswith("0o"):
        return int(v[2:], 8)
    if v.startswith("0x"):
        return int(v[2:], 16)
    return int(v)


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

# Keywords whose values are (maps of / lists of) subschemas.
_MAP_KW = ("properties", "patternProperties", "$defs", "dependentSchemas")
_ONE_KW = ("items", "additionalProperties", "not", "if", "then", "else", "contains",
           "propertyNames", "unevaluatedProperties", "unevaluatedItems")
_LIST_KW = ("allOf", "anyOf", "oneOf", "prefixItems")


def _refs(node, acc: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                acc.add(v)
            _refs(v, acc)
    elif isinstance(node, list):
        for x in node:
            _refs(x, acc)


def closure(schemas: dict, root: str) -> list[str]:
    seen: list[str] = []
    todo = [root]
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        if name not in schemas:
            raise KeyError(f"unresolved schema {name!r}")
        seen.append(name)
        acc: set[str] = set()
        _refs(schemas[name], acc)
        for ref in sorted(acc):
            if not ref.startswith(PREFIX):
                raise ValueError(f"unsupported $ref {ref!r} in {name}")
            todo.append(ref[len(PREFIX):].split("/", 1)[0].replace("~1", "/").replace("~0", "~"))
    return seen


def _fix_nullable(node: dict) -> dict:
    if node.get("nullable") is not True:
        node.pop("nullable", None)
        return node
    node = dict(node)
    del node["nullable"]
    t = node.get("type")
    if isinstance(t, str) and not any(k in node for k in ("$ref", "allOf", "anyOf", "oneOf")):
        node["type"] = [t, "null"] if t != "null" else "null"
        if "enum" in node and None not in node["enum"]:
            node["enum"] = list(node["enum"]) + [None]
        if "const" in node:
            node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(t, list):
        if "null" not in t:
            node["type"] = t + ["null"]
        return node
    return {"anyOf": [node, {"type": "null"}]}


def transform(node, fix_nullable: bool):
    """Rewrite $refs (anywhere) and translate ``nullable`` (schema positions only)."""
    if isinstance(node, list):
        return [transform(x, fix_nullable) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "$ref" and isinstance(v, str) and v.startswith(PREFIX):
            out[k] = "#/$defs/" + v[len(PREFIX):]
        elif k in _MAP_KW and isinstance(v, dict):
            out[k] = {p: _schema(s, fix_nullable) for p, s in v.items()}
        elif k in _ONE_KW and isinstance(v, dict):
            out[k] = _schema(v, fix_nullable)
        elif k in _LIST_KW and isinstance(v, list):
            out[k] = [_schema(s, fix_nullable) for s in v]
        elif k == "discriminator" and isinstance(v, dict) and isinstance(v.get("mapping"), dict):
            out[k] = dict(v, mapping={m: ("#/$defs/" + r[len(PREFIX):] if r.startswith(PREFIX) else r)
                                      for m, r in v["mapping"].items()})
        else:
            out[k] = copy.deepcopy(v)  # annotations / values: verbatim
    return out


def _schema(node, fix_nullable: bool):
    node = transform(node, fix_nullable)
    if fix_nullable and isinstance(node, dict):
        node = _fix_nullable(node)
    return node


def build(spec: dict, fix_nullable: bool = True) -> dict:
    schemas = spec["components"]["schemas"]
    names = closure(schemas, ROOT)
    defs = {n: _schema(schemas[n], fix_nullable) for n in sorted(names)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": f"Generated by tests/data/extract_schema.py from openapi.yaml ({SOURCE}); "
                    f"components/schemas/{ROOT} and its {len(names) - 1} transitive dependencies.",
        "$ref": f"#/$defs/{ROOT}",
        "$defs": defs,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("yaml_path", type=Path)
    ap.add_argument("-o", "--output", type=Path,
                    default=Path(__file__).with_name("create_chat_completion_request.schema.json"))
    ap.add_argument("--keep-nullable", action="store_true",
                    help="copy OpenAPI 'nullable' verbatim instead of translating it")
    args = ap.parse_args(argv)
    with args.yaml_path.open(encoding="utf-8") as fh:
        spec = yaml.load(fh, Loader=Yaml12Loader)
    doc = build(spec, fix_nullable=not args.keep_nullable)
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({len(doc['$defs'])} schemas)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
