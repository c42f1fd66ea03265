"""JSON schemas from requests: checked at the boundary, bounded, and turned into worker constraints.

A request's `response_format` and its tools' `parameters` are data: they are validated as JSON
schemas (Draft 2020-12 meta-schema, via `jsonschema`), bounded in size, and only ever handed to
the worker as a `Constraint` (the worker's xgrammar compiles them). Errors are `BadField` naming
the request field and the fix; the HTTP adapter turns them into OpenAI-shaped 400s.
"""
from __future__ import annotations

import json
from typing import Any

from workers.types import Constraint

#: Largest schema text accepted (characters of compact JSON), per schema and for the whole constraint.
MAX_SCHEMA_CHARS = 32 * 1024
#: Deepest nesting accepted in a schema.
MAX_SCHEMA_DEPTH = 32
#: JSON schema of `response_format: {"type": "json_object"}`: any JSON object.
JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


class BadField(ValueError):
    """A request field that is wrong: `param` names it (OpenAI's dotted form), the message says the fix."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.code = param, code


def _depth(x: Any, d: int = 0) -> int:
    if d > MAX_SCHEMA_DEPTH:
        return d
    if isinstance(x, dict):
        return max((_depth(v, d + 1) for v in x.values()), default=d)
    if isinstance(x, list):
        return max((_depth(v, d + 1) for v in x), default=d)
    return d


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """`schema` if it is a JSON schema object within the bounds; BadField naming `param` otherwise."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    if not isinstance(schema, dict):
        raise BadField(param, f"{param} must be a JSON schema object, e.g. {{\"type\": \"object\", \"properties\": "
                              f"{{...}}}}; got {type(schema).__name__}")
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_CHARS:
        raise BadField(param, f"{param} is {size} characters of JSON; at most {MAX_SCHEMA_CHARS} are accepted")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise BadField(param, f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise BadField(param, f"{param} is not a valid JSON schema: {e.message}"
                              + (f" (at {where})" if where else "")) from None
    return schema


def answer_schema(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema the answer must satisfy for `response_format` (None for text). Raises BadField.

    {"type": "text"} -> None; {"type": "json_object"} -> any JSON object;
    {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} -> that schema. The schema is
    enforced whether or not `strict` is true (a looser guarantee is never given).
    """
    if response_format is None:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return dict(JSON_OBJECT_SCHEMA)
    if kind != "json_schema":
        raise BadField("response_format.type", f"response_format.type {kind!r} is not one of text, json_object, "
                                               "json_schema", code="unsupported_value")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise BadField("response_format.json_schema", "response_format.json_schema must be an object "
                                                      "{\"name\": ..., \"schema\": {...}, \"strict\": true}")
    name = spec.get("name", "")
    if not isinstance(name, str) or len(name) > 64:
        raise BadField("response_format.json_schema.name", "response_format.json_schema.name must be a string of "
                                                           "at most 64 characters")
    if "strict" in spec and not isinstance(spec["strict"], (bool, type(None))):
        raise BadField("response_format.json_schema.strict", "response_format.json_schema.strict must be a boolean")
    if "schema" not in spec:
        return dict(JSON_OBJECT_SCHEMA)  # OpenAI: a schema-less json_schema format means any JSON object
    return check_schema(spec["schema"], "response_format.json_schema.schema")


def json_constraint(schema: dict[str, Any]) -> Constraint:
    return Constraint(json_schema=json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
