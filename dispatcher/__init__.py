"""VICIdial lead dispatcher: the library producers and operators use.

Producer apps::

    from dispatcher import enqueue_lead, InvalidLead
    job_id = enqueue_lead(agent_user="1000", phone_number="7275551212", first_name="Bob")

Workers live in the separate ``workers`` package (``celery -A workers worker``).
"""

from dispatcher.config.settings import Settings, get_settings
from dispatcher.model.errors import (
    AgentNotLoggedIn,
    AmbiguousFailure,
    ApiDisabled,
    AuthFailed,
    BrokerUnavailable,
    CallFailed,
    CampaignDNCBlocked,
    ConfigError,
    DispatcherError,
    DNCBlocked,
    FieldError,
    HTTPStatusError,
    InsertFailed,
    InvalidLead,
    InvalidPayload,
    InvalidRequest,
    InvalidSource,
    ManualListUndefined,
    NetworkError,
    PermanentFailure,
    PermissionDenied,
    ServerRefused,
    TemporaryFailure,
    UnknownResponse,
)
from dispatcher.model.lead import Lead, make_lead
from dispatcher.ops.producer import enqueue_lead, enqueue_leads, job_status
from dispatcher.store.deadletter import DeadLetter, DeadLetterStore

__all__ = [
    "AgentNotLoggedIn",
    "AmbiguousFailure",
    "ApiDisabled",
    "AuthFailed",
    "BrokerUnavailable",
    "CallFailed",
    "CampaignDNCBlocked",
    "ConfigError",
    "DNCBlocked",
    "DeadLetter",
    "DeadLetterStore",
    "DispatcherError",
    "FieldError",
    "HTTPStatusError",
    "InsertFailed",
    "InvalidLead",
    "InvalidPayload",
    "InvalidRequest",
    "InvalidSource",
    "Lead",
    "ManualListUndefined",
    "NetworkError",
    "PermanentFailure",
    "PermissionDenied",
    "ServerRefused",
    "Settings",
    "TemporaryFailure",
    "UnknownResponse",
    "enqueue_lead",
    "enqueue_leads",
    "get_settings",
    "job_status",
    "make_lead",
]
