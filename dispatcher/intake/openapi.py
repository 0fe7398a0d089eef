"""The OpenAPI 3.1 document of the HTTP intake, served at ``/openapi.json``.

Written by hand (the app is plain Starlette) so that it describes exactly what
the handlers answer: the 422 body is the dispatcher's own ``{"errors": [...]}``,
not a framework's. The lead schema is deliberately loose (types, required keys,
no unknown keys): the real rules (VICIdial's column sizes and character sets, each
target's) live in :mod:`dispatcher.model.lead`, :mod:`dispatcher.model.list_lead` and
:mod:`dispatcher.model.list_options`, and a 422 names every field that breaks them, so
repeating them here would only let the two drift apart. The test suite fuzzes
the running server from this document (schemathesis) to keep it honest.
"""

from __future__ import annotations

import copy
from typing import Any

from dispatcher.model.lead import LEAD_FIELDS
from dispatcher.model.list_lead import LIST_LEAD_FIELDS
from dispatcher.model.list_options import CALLBACK_TYPES, TZ_METHODS

__all__ = ["MAX_BATCH", "MAX_BODY_BYTES", "openapi_document"]

#: Largest request body accepted, in bytes (a bigger one gets 413).
MAX_BODY_BYTES = 1024 * 1024
#: Most leads in one ``POST /v1/leads:batch``.
MAX_BATCH = 1000

# The lead fields that may also be sent as JSON integers (see dispatcher.model.lead).
_INT_OK = frozenset(
    {
        "agent_user",
        "phone_number",
        "phone_code",
        "alt_phone",
        "rank",
        "vendor_lead_code",
        "source_id",
        "owner",
        "list_id",
        "entry_list_id",
    }
)
_REQUIRED = ("phone_number",)
#: Every lead field of either target (an agent's, a list's), in VICIdial's order.
_FIELDS = (*LEAD_FIELDS, *(f for f in LIST_LEAD_FIELDS if f not in LEAD_FIELDS))
_BOOL_OPTION = {"type": ["boolean", "null"]}


def _list_option_schemas() -> dict[str, Any]:
    """add_lead's options (a lead for a list only)."""
    text = ["string", "null"]
    return {
        "campaign_id": {
            "type": text,
            "description": "A lead for a list: the campaign whose DNC list campaign_dnc_check "
            "searches and where a callback goes: 2-8 of [-_0-9a-zA-Z]. Required with "
            "campaign_dnc_check (the default) or a callback, unless the dialer has a default.",
        },
        "duplicate_check": {
            "type": text,
            "description": "A lead for a list: VICIdial's duplicate checks (DUPLIST, DUPCAMP, "
            "DUPSYS, DUPPHONEALT..., DUPTITLEALTPHONE..., DUPNAMEPHONE...), joined by '-', "
            "with at most one window (30DAY...), or NONE. A duplicate found ends the job in "
            "the state 'duplicate' with existing_lead_id.",
        },
        "add_to_hopper": {**_BOOL_OPTION, "description": "A lead for a list: into the hopper."},
        "hopper_priority": {
            "type": ["integer", "string", "null"],
            "description": "With add_to_hopper: -99 to 99.",
        },
        "callback": {
            "type": ["object", "null"],
            "description": "A lead for a list: a scheduled callback (the lead is stored "
            "CBHOLD); needs campaign_id.",
            "properties": {
                "datetime": {
                    "type": "string",
                    "description": "NOW, {n}DAYS or YYYY-MM-DD HH:MM:SS (VICIdial's local time).",
                },
                "type": {"type": ["string", "null"], "enum": [*CALLBACK_TYPES, None]},
                "user": {"type": ["string", "null"], "description": "With USERONLY."},
                "status": {"type": ["string", "null"], "description": "Default CALLBK."},
                "comments": {"type": ["string", "null"]},
            },
            "additionalProperties": False,
        },
        "custom_fields": {
            "type": ["object", "null"],
            "description": "A lead for a list: its list's custom fields, name ([a-z0-9_]) -> "
            "value.",
            "additionalProperties": {"type": ["string", "integer", "null"]},
        },
        "lookup_state": {**_BOOL_OPTION, "description": "An empty state takes the area code's."},
        "tz_method": {"type": ["string", "null"], "enum": [*TZ_METHODS, None]},
        "usacan_prefix_check": {**_BOOL_OPTION, "description": "VICIdial's prefix check."},
        "usacan_areacode_check": {**_BOOL_OPTION, "description": "VICIdial's area code check."},
        "list_exists_check": {
            **_BOOL_OPTION,
            "description": "VICIdial refuses a list without a row (default: true).",
        },
    }


def _lead_schema() -> dict[str, Any]:
    props: dict[str, Any] = {}
    for name in _FIELDS:
        types = ["string", "integer"] if name in _INT_OK else ["string"]
        if name not in _REQUIRED:
            types.append("null")
        props[name] = {"type": types}
    props["agent_user"]["description"] = (
        "A lead for a logged-in agent (external_add_lead): 2-20 of [-_0-9a-zA-Z]. Give "
        "agent_user or list_id."
    )
    props["list_id"]["description"] = (
        "A lead for a list (add_lead): 3-20 digits, no leading 0. Give agent_user or list_id "
        "(neither: the dialer's default list, if it has one)."
    )
    props["phone_number"]["description"] = (
        "6-18 digits (a list's lead: 6-16) once spaces, '-', '.', parentheses and a leading "
        "'+' are removed."
    )
    props["phone_code"]["description"] = "Country code to dial (default DISPATCHER_PHONE_CODE)."
    props["dnc_check"] = {
        "type": "boolean",
        "description": "Check VICIdial's system DNC list (default DISPATCHER_DNC_CHECK: true).",
    }
    props["campaign_dnc_check"] = {
        "type": "boolean",
        "description": "Check the campaign DNC list (default DISPATCHER_CAMPAIGN_DNC_CHECK: true).",
    }
    props["idempotency_key"] = {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "description": "A second lead with the same key gets the first job's id; nothing "
        "is enqueued twice. The Idempotency-Key header does the same. The same key with "
        "another lead is a 409.",
    }
    props["dialer"] = {
        "type": ["string", "null"],
        "pattern": "^[-_0-9a-zA-Z]{1,32}$",
        "description": "The VICIdial server (a name of the dialers file); default: the "
        "fleet's default dialer. An unknown name is a 422.",
    }
    props["priority"] = {
        "type": ["string", "null"],
        "enum": ["realtime", "bulk", None],
        "description": "Lane within the dialer: realtime jobs are always taken before bulk "
        "ones. Default: realtime for /v1/leads, bulk for /v1/leads:batch.",
    }
    props["notify_url"] = {
        "type": ["string", "null"],
        "maxLength": 2000,
        "description": "Where the job's outcome notification is POSTed (lead.added, "
        "lead.duplicate, lead.dead_lettered, lead.replayed_added; signed, see the README's "
        "Notifications). It must lie under a prefix of DISPATCHER_NOTIFY_ALLOWED (else a "
        "422); default: DISPATCHER_NOTIFY_URL, if set.",
    }
    props.update(_list_option_schemas())
    return {
        "type": "object",
        "description": "The keyword arguments of enqueue_lead: the lead fields of VICIdial's "
        "external_add_lead (agent_user) or add_lead (list_id), whose column sizes and "
        "character sets are checked (a 422 names every bad field), plus the DNC flags, an "
        "idempotency key, and a list's options. Unknown keys are errors.",
        "required": list(_REQUIRED),
        "properties": props,
        "additionalProperties": False,
        "example": {
            "agent_user": "1000",
            "phone_number": "(727) 555-1212",
            "first_name": "Bob",
            "last_name": "Smith",
        },
    }


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


_NULLABLE_STR = {"type": ["string", "null"]}

_COMMON_V1 = {
    "401": _json("Error", "Missing, malformed or unknown bearer token (always the same body)."),
    "413": _json("Error", f"Request body larger than {MAX_BODY_BYTES} bytes."),
}
_UNAVAILABLE = {"503": _json("Error", "Redis (the queue) is unreachable: retry later.")}


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI document (callers may mutate it)."""
    return copy.deepcopy(_document())


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "VICIdial lead dispatcher: HTTP intake",
            "version": "1",
            "description": "Validate a lead and put it on the dispatcher's queue in "
            "milliseconds; workers add it to VICIdial later (external_add_lead), retry "
            "temporary failures and dead-letter the rest. Every /v1 route needs "
            "`Authorization: Bearer TOKEN` with a token from DISPATCHER_INTAKE_TOKENS.",
        },
        "paths": {
            "/v1/leads": {
                "post": {
                    "operationId": "enqueueLead",
                    "summary": "Enqueue one lead",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "A key seen before returns the first job's id "
                            "(200) and enqueues nothing.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Lead"}}
                        },
                    },
                    "responses": {
                        "202": _json("JobId", "Enqueued: a new job."),
                        "200": _json("JobId", "The idempotency key was seen before: its job."),
                        "400": _json("Errors", "The body is not JSON."),
                        **_COMMON_V1,
                        "409": _json(
                            "Conflict",
                            "The idempotency key (header or body) belongs to another lead: "
                            "nothing enqueued.",
                        ),
                        "422": _json("Errors", "Invalid lead: every bad field is named."),
                        **_UNAVAILABLE,
                    },
                }
            },
            "/v1/leads:batch": {
                "post": {
                    "operationId": "enqueueLeads",
                    "summary": f"Enqueue up to {MAX_BATCH} leads in one request",
                    "description": "Each lead is validated on its own: the valid ones are "
                    "enqueued (one Redis round trip), the invalid ones are reported by index.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/LeadBatch"}
                            }
                        },
                    },
                    "responses": {
                        "200": _json("BatchResults", "One result per lead, in input order."),
                        "400": _json("Errors", "The body is not JSON."),
                        **_COMMON_V1,
                        "422": _json("Errors", 'The body is not {"leads": [...]}.'),
                        **_UNAVAILABLE,
                    },
                }
            },
            "/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "summary": "A job's state (what `dispatcher job --json` prints)",
                    "parameters": [
                        {
                            "name": "job_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        }
                    ],
                    "responses": {
                        "200": _json("JobStatus", "The job's state."),
                        **_COMMON_V1,
                        "404": _json("Error", "No such job (or its state expired)."),
                        **_UNAVAILABLE,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "200 when Redis answers, else 503 (no token)",
                    "security": [],
                    "responses": {
                        "200": _json("Health", "Redis answers."),
                        "503": _json("Health", "Redis does not answer."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Fleet-wide counters and gauges, Prometheus text format (no token)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format 0.0.4.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document (no token)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "security": [{"bearerAuth": []}],
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Lead": _lead_schema(),
                "LeadBatch": {
                    "type": "object",
                    "required": ["leads"],
                    "properties": {
                        "leads": {
                            "type": "array",
                            "maxItems": MAX_BATCH,
                            "items": {"$ref": "#/components/schemas/Lead"},
                        }
                    },
                    "additionalProperties": False,
                },
                "JobId": {
                    "type": "object",
                    "required": ["job_id"],
                    "properties": {"job_id": {"type": "string"}},
                },
                "FieldError": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
                "Errors": {
                    "type": "object",
                    "required": ["errors"],
                    "properties": {
                        "errors": {
                            "type": "array",
                            "minItems": 1,
                            "items": {"$ref": "#/components/schemas/FieldError"},
                        }
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Conflict": {
                    "type": "object",
                    "required": ["error", "job_id"],
                    "properties": {
                        "error": {"type": "string"},
                        "job_id": {"type": "string", "description": "The key's first job."},
                    },
                },
                "BatchResults": {
                    "type": "object",
                    "required": ["results"],
                    "properties": {
                        "results": {
                            "type": "array",
                            "items": {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "required": ["index", "job_id", "created"],
                                        "properties": {
                                            "index": {"type": "integer", "minimum": 0},
                                            "job_id": {"type": "string"},
                                            "created": {
                                                "type": "boolean",
                                                "description": "false when the lead's "
                                                "idempotency_key was seen before: job_id is "
                                                "the first job's id and nothing was enqueued.",
                                            },
                                        },
                                    },
                                    {
                                        "type": "object",
                                        "required": ["index", "errors"],
                                        "properties": {
                                            "index": {"type": "integer", "minimum": 0},
                                            "errors": {
                                                "type": "array",
                                                "minItems": 1,
                                                "items": {
                                                    "$ref": "#/components/schemas/FieldError"
                                                },
                                            },
                                        },
                                    },
                                ]
                            },
                        }
                    },
                },
                "JobStatus": {
                    "type": "object",
                    "required": ["job_id", "state", "attempts"],
                    "properties": {
                        "job_id": {"type": "string"},
                        "state": {
                            "type": ["string", "null"],
                            "enum": [
                                "queued",
                                "running",
                                "retrying",
                                "added",
                                "duplicate",
                                "dead",
                                None,
                            ],
                        },
                        "attempts": {"type": "integer"},
                        "reason": _NULLABLE_STR,
                        "error": _NULLABLE_STR,
                        "http_status": {"type": ["integer", "null"]},
                        "lead_id": _NULLABLE_STR,
                        "list_id": _NULLABLE_STR,
                        "campaign": _NULLABLE_STR,
                        "agent_user": _NULLABLE_STR,
                        "target": {"type": "string", "enum": ["agent", "list"]},
                        "target_list_id": _NULLABLE_STR,
                        "campaign_id": _NULLABLE_STR,
                        "existing_lead_id": _NULLABLE_STR,
                        "enqueued_at": _NULLABLE_STR,
                        "updated_at": _NULLABLE_STR,
                        "next_attempt_at": _NULLABLE_STR,
                        "reconcile": _NULLABLE_STR,
                        "duplicate_lead_ids": {
                            "type": ["array", "null"],
                            "items": {"type": "string"},
                        },
                        "deleted_lead_ids": {
                            "type": ["array", "null"],
                            "items": {"type": "string"},
                        },
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}},
                },
            },
        },
    }
