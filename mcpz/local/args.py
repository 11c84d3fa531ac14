"""Tool arguments as typed on a command line, read with the tool's input schema. Pure: no I/O.

`key=value` words become a JSON object. A value is read as JSON when it parses (`a=2`,
`ok=true`, `tags=["x"]`, `where={"lat": 1}`) and kept as text otherwise (`city=Oslo`). The
tool's input schema settles the ambiguous cases: a property typed "string" keeps the text as
typed (`zip=0150` stays "0150", `text=42` stays "42"), and a property that accepts numbers gets
the number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mcpz.errors import UsageError

_JSON_HINT = 'write arguments as key=value (e.g. city=Oslo), or pass --args-json \'{"city": "Oslo"}\''


def parse_args_json(text: str) -> dict[str, Any]:
    """Read `--args-json`: it must be a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise UsageError(f"--args-json is not valid JSON: {e}", hint=_JSON_HINT) from None
    if not isinstance(value, dict):
        raise UsageError(f"--args-json must be a JSON object, not {_json_type(value)}", hint=_JSON_HINT)
    return value


def build_arguments(
    arguments: Mapping[str, Any] | None,
    key_values: Sequence[str],
    schema: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`arguments` with the `key=value` words merged over them (a word wins over the same key),
    checked against `schema` when there is one (`check_arguments`)."""
    merged = dict(arguments or {})
    merged.update(parse_key_values(key_values, schema))
    if schema is not None:
        check_arguments(merged, schema)
    return merged


def check_arguments(arguments: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    """Refuse, before anything is sent, arguments the tool's input schema rules out: a required one
    missing, one it does not name (unless it allows more), a value of a type it does not accept.
    One line names the argument; the hint gives the tool's signature. Checks only what the schema
    says plainly: anything subtler is the agent's own validation to report."""
    if not isinstance(schema, Mapping):
        return
    properties = _properties(schema)
    hint = f"its arguments: {signature(schema)}" if properties else "this tool takes no arguments"
    required = schema.get("required", [])
    for name in required if isinstance(required, list) else []:
        if isinstance(name, str) and name not in arguments:
            types = schema_types(properties.get(name), schema)
            kind = f" ({'|'.join(sorted(types))})" if types else ""
            raise UsageError(f'missing argument "{name}"{kind}', hint=hint)
    extra = schema.get("additionalProperties", False if properties or "properties" in schema else True)
    if extra is False:
        for name in arguments:
            if name not in properties:
                import difflib

                close = difflib.get_close_matches(name, list(properties), n=1)
                guess = f'did you mean "{close[0]}"? ' if close else ""
                raise UsageError(f'unknown argument "{name}"', hint=guess + hint)
    for name, value in arguments.items():
        prop = _resolve(properties.get(name), schema)
        choices = prop.get("enum") if isinstance(prop, Mapping) else None
        if isinstance(choices, list) and choices and value not in choices:
            listed = ", ".join(json.dumps(c) for c in choices[:10])
            raise UsageError(f'argument "{name}" must be one of {listed}, not {json.dumps(value)}', hint=hint)
        types = schema_types(prop, schema)
        if types is not None and not _accepts(types, value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise UsageError(
                f'argument "{name}" must be {" or ".join(sorted(types))}, not {_json_type(value)} {shown}',
                hint=hint,
            )


def parse_key_values(words: Sequence[str], schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Turn `key=value` words into arguments, each value read with its property's schema."""
    properties = _properties(schema)
    arguments: dict[str, Any] = {}
    for key, text in split_key_values(words):
        arguments[key] = coerce_value(text, properties.get(key), schema)
    return arguments


def split_key_values(words: Sequence[str]) -> list[tuple[str, str]]:
    """Split `key=value` words at their first "=", or say which word is not one."""
    pairs = []
    for word in words:
        key, sep, text = word.partition("=")
        if not sep or not key:
            raise UsageError(f'argument "{word}" is not key=value', hint=_JSON_HINT)
        pairs.append((key, text))
    return pairs


def coerce_value(text: str, prop: Any, root: Mapping[str, Any] | None = None) -> Any:
    """Read one value: JSON when it parses to a type the property accepts, else the text."""
    types = schema_types(prop, root)
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if types is None:
        return parsed
    if "string" in types and (isinstance(parsed, str) or not _accepts(types, parsed)):
        return text
    # A value the schema does not accept is sent as JSON anyway: the agent's own
    # validation then names the problem better than a guess here could.
    return parsed


def schema_types(prop: Any, root: Mapping[str, Any] | None = None) -> set[str] | None:
    """The JSON types a property schema accepts, or None when the schema does not say."""
    prop = _resolve(prop, root)
    if not isinstance(prop, Mapping):
        return None
    kind = prop.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return set(kind)
    if "const" in prop:
        return {_json_type(prop["const"])}
    if isinstance(prop.get("enum"), list) and prop["enum"]:
        return {_json_type(v) for v in prop["enum"]}
    for combinator in ("anyOf", "oneOf"):
        options = prop.get(combinator)
        if isinstance(options, list) and options:
            union: set[str] = set()
            for option in options:
                found = schema_types(option, root)
                if found is None:
                    return None
                union |= found
            return union
    all_of = prop.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        return schema_types(all_of[0], root)
    return None


def signature(schema: Mapping[str, Any] | None) -> str:
    """A one-line summary of an input schema: `city: string, days?: integer`."""
    properties = _properties(schema)
    required = set(schema.get("required", [])) if isinstance(schema, Mapping) else set()
    parts = []
    for name, prop in properties.items():
        types = schema_types(prop, schema) or {"any"}
        if len(types) > 1:
            types.discard("null")  # optional is already marked by "?"
        label = "|".join(sorted(types))
        parts.append(f"{name}{'' if name in required else '?'}: {label}")
    return ", ".join(parts)


def _properties(schema: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not isinstance(schema, Mapping):
        return {}
    properties = schema.get("properties")
    return properties if isinstance(properties, Mapping) else {}


def _resolve(prop: Any, root: Mapping[str, Any] | None) -> Any:
    """Follow a local `$ref` (`#/$defs/Name`), as pydantic writes them for nested models."""
    for _ in range(8):
        if not isinstance(prop, Mapping) or not isinstance(prop.get("$ref"), str) or root is None:
            return prop
        target: Any = root
        for part in prop["$ref"].removeprefix("#/").split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        prop = target
    return None


def _accepts(types: set[str], value: Any) -> bool:
    kind = _json_type(value)
    return kind in types or (kind == "integer" and "number" in types)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
