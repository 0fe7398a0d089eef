"""A faithful stand-in for VICIdial's agent API (``agc/api.php``), on a real socket.

What it is for: testing and demonstrating the dispatcher without a call center.
It answers ``function=external_add_lead`` and ``function=version`` the way a real
VICIdial 2.14-82 server does, as described in shared/vicidial/external_add_lead.md:
the same checks in the same order (source, authentication with failed-login
counting and lockout, API active, validity, permission, agent logged in, campaign,
system DNC, campaign DNC, insert), byte-identical answer lines, the same silent
field mangling, the POST quirk (a POST without ``value`` stores the last form
field's value as the phone number) and the HTTP 500 when ``"`` reaches the SQL.
On top of that it injects faults on demand: latency, HTTP errors, resets before
or after the lead is inserted, stalls, garbage bodies, failed inserts -- by rate,
by script per phone number or per call number, or as an outage.

In tests::

    import httpx
    from dispatcher.simulator import Simulator, SimulatorState

    with Simulator(SimulatorState.demo()) as sim:          # port 0: a free port
        params = {"source": "test", "user": "6666", "pass": "1234",
                  "function": "external_add_lead", "agent_user": "1000",
                  "value": "7275551212", "phone_code": "1"}
        sim.script_phone("7275551212", ["http_503", "http_503"])  # fail twice, then work
        for _ in range(3):
            reply = httpx.get(sim.url, params=params)
        assert reply.text == "SUCCESS: lead added - 7275551212|TESTCAMP|101|1|1000\\n"
        assert sim.count_by_phone() == {"7275551212": 1}
        assert [r.fault for r in sim.requests] == ["http_503", "http_503", None]

From the command line (``dispatcher simulate`` or ``python -m dispatcher.simulator``)::

    dispatcher simulate --port 8088 --state state.json --latency-ms 20 --fail-rate 0.1 \\
        --fail-with reset_after --seed 7
    curl 'http://127.0.0.1:8088/agc/api.php?function=version'
    curl 'http://127.0.0.1:8088/agc/api.php?source=test&user=6666&pass=1234&function=external_add_lead&agent_user=1000&value=7275551212&phone_code=1'

The demo state is documented on :meth:`SimulatorState.demo`; the state file's
JSON shape on :mod:`dispatcher.simulator.state`; the fault kinds in
:data:`FAULT_KINDS` / :data:`FAULT_DESCRIPTIONS`. Modules: ``state`` (the
configuration), ``mangling`` (what the server does to field values), ``agc`` (the
agc/api.php logic), ``faults`` (fault injection), ``http_server`` (the asyncio
HTTP/1.1 server), ``server`` (the :class:`Simulator`), ``cli`` (the command).
"""

from dispatcher.simulator.agc import API_BUILD, API_VERSION, StoredLead
from dispatcher.simulator.cli import simulate_command
from dispatcher.simulator.faults import FAULT_DESCRIPTIONS, FAULT_KINDS, FaultKind
from dispatcher.simulator.listconfig import (
    CallTimeConfig,
    CustomFieldConfig,
    ListConfig,
    NanpaPrefixConfig,
    PhoneCodeConfig,
    PostalCodeConfig,
)
from dispatcher.simulator.listtables import AltPhoneRow, CallbackRow, HopperRow
from dispatcher.simulator.server import API_PATH, NONAGENT_PATH, RequestRecord, Simulator
from dispatcher.simulator.state import (
    CampaignConfig,
    SimulatorState,
    UserConfig,
    UserGroupConfig,
)

__all__ = [
    "API_BUILD",
    "API_PATH",
    "API_VERSION",
    "FAULT_DESCRIPTIONS",
    "FAULT_KINDS",
    "NONAGENT_PATH",
    "AltPhoneRow",
    "CallTimeConfig",
    "CallbackRow",
    "CampaignConfig",
    "CustomFieldConfig",
    "FaultKind",
    "HopperRow",
    "ListConfig",
    "NanpaPrefixConfig",
    "PhoneCodeConfig",
    "PostalCodeConfig",
    "RequestRecord",
    "Simulator",
    "SimulatorState",
    "StoredLead",
    "UserConfig",
    "UserGroupConfig",
    "simulate_command",
]
