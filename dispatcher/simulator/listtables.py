"""The simulator's tables around lists: what ``add_lead`` reads and what it writes next to
the lead (hopper, callbacks, alternate phones, custom field values).

Pure data, no locking (the simulator holds its lock). Read by
:mod:`dispatcher.simulator.addlead` and the Non-Agent look-ups; inspected by tests
through :class:`dispatcher.simulator.Simulator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dispatcher.simulator.listconfig import (
    CallTimeConfig,
    CustomFieldConfig,
    ListConfig,
    NanpaPrefixConfig,
    PhoneCodeConfig,
    PostalCodeConfig,
)

__all__ = ["MAX_LIST_ID", "AltPhoneRow", "CallbackRow", "HopperRow", "ListTables", "list_key"]

#: vicidial_list.list_id is BIGINT UNSIGNED: MariaDB (non-strict) clamps larger values.
MAX_LIST_ID = 2**64 - 1


def list_key(list_id: str) -> str:
    """How SQL compares a list id sent as text with the BIGINT column: as a number
    (``00101`` is list 101, the empty string is 0)."""
    return str(int(list_id)) if list_id.isdigit() else "0"


@dataclass(frozen=True)
class HopperRow:
    """One row of ``vicidial_hopper`` as ``add_lead`` inserts it."""

    hopper_id: int
    lead_id: int
    campaign_id: str
    list_id: str
    gmt_offset_now: str
    state: str
    priority: int
    vendor_lead_code: str
    status: str = "READY"
    user: str = ""
    source: str = "P"
    alt_dial: str = "NONE"


@dataclass(frozen=True)
class CallbackRow:
    """One row of ``vicidial_callbacks`` as ``add_lead`` inserts it."""

    callback_id: int
    lead_id: int
    list_id: str
    campaign_id: str
    entry_time: str
    #: as stored in the DATETIME column (``0000-00-00 00:00:00`` when not a date)
    callback_time: str
    user: str
    #: USERONLY or ANYONE
    recipient: str
    comments: str
    user_group: str
    lead_status: str
    status: str = "ACTIVE"


@dataclass(frozen=True)
class AltPhoneRow:
    """One row of ``vicidial_list_alt_phones`` (``multi_alt_phones``)."""

    alt_phone_id: int
    lead_id: int
    phone_code: str
    phone_number: str
    alt_phone_note: str
    alt_phone_count: int
    active: str = "Y"


@dataclass
class ListTables:
    """``vicidial_lists``, the time-zone tables, call times, custom fields and the rows
    ``add_lead`` writes besides the lead.

    ``lists`` are the explicit rows (canonical list id -> row); a campaign's manual dial
    list is a list row too (see ``Tables.list_rows``). ``custom_fields`` names the lists
    with a ``custom_{list}`` table and their field definitions; ``custom_rows`` holds
    that table's rows (list -> lead_id -> label -> value).
    """

    lists: dict[str, ListConfig] = field(default_factory=dict)
    phone_codes: list[PhoneCodeConfig] = field(default_factory=list)
    postal_codes: list[PostalCodeConfig] = field(default_factory=list)
    nanpa_prefixes: list[NanpaPrefixConfig] = field(default_factory=list)
    call_times: dict[str, CallTimeConfig] = field(default_factory=dict)
    custom_fields: dict[str, tuple[CustomFieldConfig, ...]] = field(default_factory=dict)
    custom_fields_enabled: bool = False
    custom_rows: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)
    hopper: list[HopperRow] = field(default_factory=list)
    callbacks: list[CallbackRow] = field(default_factory=list)
    alt_phones: list[AltPhoneRow] = field(default_factory=list)
    next_hopper_id: int = 1
    next_callback_id: int = 1
    next_alt_phone_id: int = 1

    def call_time(self, call_time_id: str) -> CallTimeConfig | None:
        wanted = call_time_id.lower()  # the id column compares case-insensitively
        for name, row in self.call_times.items():
            if name.lower() == wanted:
                return row
        return None

    def forget_lead(self, lead_id: int, list_id: str, *, custom_fields: bool) -> tuple[int, bool]:
        """What ``update_lead`` with ``delete_lead=Y`` removes besides the lead row.

        Deletes the lead's callbacks (returns how many) and, with ``custom_fields``, its
        ``custom_{list}`` row; returns ``(callbacks, custom table missing)``. The hopper
        and the alternate phones stay, as on the real server.
        """
        kept = [row for row in self.callbacks if row.lead_id != lead_id]
        removed = len(self.callbacks) - len(kept)
        self.callbacks = kept
        missing = False
        if custom_fields:
            table = self.custom_rows.get(list_id) if list_id in self.custom_fields else None
            if table is None:
                missing = True
            else:
                table.pop(lead_id, None)
        return removed, missing

    def clear_lead_rows(self) -> None:
        """Every row that hangs off a lead (when all leads are deleted)."""
        self.hopper.clear()
        self.callbacks.clear()
        self.alt_phones.clear()
        for table in self.custom_rows.values():
            table.clear()
