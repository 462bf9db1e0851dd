"""The JSON Schema of a policy document, for editors (yaml-language-server) and CI.

The loader in policy.py is the authority and checks more than a schema can (pattern syntax,
unique names, registry references); this schema describes the same shape so editors can
complete keys and flag mistakes as you type. A test keeps the two in step.
"""

from __future__ import annotations

from typing import Any

_DURATION = {
    "type": "string",
    "pattern": r"^([0-9]+[smhdw])+$",
    "description": "A duration: <n>s|m|h|d|w, combinable (1d12h), at most 100 years.",
}
_PATTERNS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "string",
        "minLength": 1,
        "description": "A glob (* and ? stay within one path segment, ** crosses /, {a,b} "
                       "alternates) or re:<expression> matching the whole name.",
    },
}


def policy_schema() -> dict[str, Any]:
    keep_rule = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "description": "A manifest matched by any keep rule is kept.",
        "properties": {
            "tags": {**_PATTERNS, "description": "Keep manifests with a tag matching any."},
            "newest": {"type": "integer", "minimum": 0,
                       "description": "Keep the N newest manifests carrying a matching tag "
                                      "(any ordinary tag when tags is absent)."},
            "younger_than": _DURATION,
        },
    }
    delete_rule = {
        "type": "object",
        "additionalProperties": False,
        "description": "Deleted only if some delete rule matches and no keep rule does.",
        "properties": {
            "tags": {**_PATTERNS, "description": "Matches when every ordinary tag matches."},
            "untagged": {"const": True, "description": "Matches untagged orphans."},
            "older_than": {**_DURATION,
                           "description": "Older than this, by the manifest's own time (push, "
                                          "config created, created annotation, newest "
                                          "platform child, else first seen by retention)."},
            "untagged_for": {**_DURATION,
                             "description": "Untagged rules only: seen without an ordinary "
                                            "tag for at least this long (from the state)."},
        },
        "oneOf": [{"required": ["tags"], "not": {"required": ["untagged_for"]}},
                  {"required": ["untagged"]}],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "retention policy",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "repositories", "delete"],
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
            "registry": {"type": "string", "minLength": 1},
            "schedule": {"type": "string", "description": "Cron, five fields, UTC."},
            "repositories": {
                "type": "object",
                "additionalProperties": False,
                "required": ["include"],
                "properties": {"include": _PATTERNS,
                               "exclude": {**_PATTERNS, "minItems": 0}},
            },
            "keep": {"type": "array", "items": keep_rule},
            "delete": {"type": "array", "minItems": 1, "items": delete_rule},
            "max_deletions": {"type": "integer", "minimum": 0},
            "delete_empty_repositories": {"type": "boolean"},
        },
    }
