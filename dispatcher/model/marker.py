"""The job's marker: how the dispatcher recognises its own lead in VICIdial.

Every call carries the job's **marker** (:func:`marker`) in ``DISPATCHER_MARKER_FIELD``
(``source_id`` by default) when the producer left that field empty (:func:`mark`, on
every call's path); a lead carrying it is this job's, whatever else it holds
(reconciliation's rules: :mod:`dispatcher.vicidial.findings`). Where the producer
filled the field (or the setting is ``none``), no marker is written.

The marker is the job id itself where it fits the field and is made of
``[0-9a-zA-Z._-]`` (job ids made by the dispatcher are 32 hex digits: in
``source_id``, 50 characters, the marker *is* the job id, so an operator can find
the lead in VICIdial by it), else the first characters of the SHA-256 of the job
id in hex (``vendor_lead_code`` holds 20). Either way it passes the lead rules and
VICIdial stores it unchanged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

from dispatcher.model.lead import Lead

__all__ = ["MARKER_FIELDS", "mark", "marker"]

#: The lead fields a marker can go in, with their VICIdial column sizes.
MARKER_FIELDS: dict[str, int] = {"source_id": 50, "vendor_lead_code": 20}
_SAFE = re.compile(r"[0-9a-zA-Z._-]+")


def marker(job_id: str, field: str) -> str:
    """The job's marker for ``field`` (``source_id`` or ``vendor_lead_code``)."""
    size = MARKER_FIELDS[field]
    if len(job_id) <= size and _SAFE.fullmatch(job_id):
        return job_id
    return hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:size]


def mark(lead: Lead, job_id: str, field: str) -> Lead:
    """``lead`` with the job's marker in ``field`` if the producer left it empty.

    ``field`` is the setting (``none``: the lead unchanged). The marker is valid for
    the field by construction, so the lead needs no new validation.
    """
    if field == "none" or field in lead.fields:
        return lead
    # replace() keeps who gets the lead (agent_user, or a list's list_id) as it is.
    return replace(lead, fields={**lead.fields, field: marker(job_id, field)})
