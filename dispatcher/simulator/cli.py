"""``dispatcher simulate``: run the VICIdial stand-in from the command line."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType

import click

from dispatcher.simulator.faults import FAULT_DESCRIPTIONS, FAULT_KINDS
from dispatcher.simulator.server import RequestRecord, Simulator
from dispatcher.simulator.state import SimulatorState

__all__ = ["simulate_command"]

_KINDS_HELP = "\n".join(f"  {kind:<14}{text}" for kind, text in FAULT_DESCRIPTIONS.items())

_HELP = f"""Run a stand-in for VICIdial's agent API (agc/api.php) on this machine.

It answers function=external_add_lead and function=version exactly as a real
VICIdial 2.14 server does (shared/vicidial/external_add_lead.md): the same checks
in the same order, the same answer lines, the same field mangling and quirks. Use
it to try the dispatcher end to end, for demos and for load tests, without a real
call center. Leads are kept in memory; every call is printed on stderr
(never the password) unless --quiet.

It also serves VICIdial's Non-Agent API at /vicidial/non_agent_api.php
(version, lead_all_info, lead_search, update_lead with delete_lead=Y), as
shared/vicidial/non_agent_api_lookup.md describes: what the dispatcher's
reconciliation looks leads up with. Its login needs user_level 7+; lead_all_info
needs view_reports and modify_leads (state file keys per user; the demo user
6666 has them).

And function=add_lead, which adds a lead to a list, byte for byte as
shared/vicidial/non_agent_add_lead.md describes: its permission checks
(user_level 8+, modify_leads 1-4, api_list_restrict), phone and DNC checks, the
duplicate checks (DUPLIST, DUPCAMP30DAY, ...; no lock: --add-lead-race-ms opens
a window between check and insert), the GMT look-up, hopper, callbacks, multi
alt phones and custom fields, and its HTTP 500 cases. Leads from both APIs share
one table and id sequence.

\b
Without --state it serves the demo state:
  API user 6666 / password 1234 (ALL_FUNCTIONS); 6667 has no API access;
  6668 may only call version; alt_user EXT1000 resolves to agent 1000.
  Agents logged in: 1000 on TESTCAMP (manual dial list 101), 1001 on NOLIST
  (list NULL), 1002 on OTHERDNC (list 102, TESTCAMP's campaign DNC list),
  1003 on GHOST (no such campaign: "manual dial list undefined").
  System DNC: 7275550000, 7275550002. TESTCAMP DNC: 7275550001, 7275550002.
  Lists: 101 (TESTCAMP), 102 (OTHERDNC; custom field favorite_color), 998 and
  999 (TESTCAMP; 999 is add_lead's default list); custom fields enabled; phone
  codes 1/727 FL -5.00, 1/808 HI -10.00, 44 +0.00, 61 NSW +10.00; servers row
  local_gmt -5.00; PHP in this machine's time zone.

\b
--state FILE takes the JSON of DESIGN.md, every key optional:
  {{"users": {{"6666": {{"pass": "1234", "api_access": true,
                       "functions": ["ALL_FUNCTIONS"], "user_group": "ADMIN",
                       "user_level": 9, "view_reports": true, "modify_leads": true}}}},
   "agents": {{"1000": "TESTCAMP"}},
   "campaigns": {{"TESTCAMP": {{"manual_dial_list_id": "101"}}}},
   "dnc": ["7275550000"], "campaign_dnc": {{"TESTCAMP": ["7275550001"]}},
   "api_active": true, "non_latin": false}}
  "non_latin": true is VICIdial's use_non_latin=1 (names in any script kept).
  For add_lead (dispatcher/simulator/listconfig.py has the details):
  {{"lists": {{"101": {{"campaign_id": "TESTCAMP", "local_call_time": "campaign"}}}},
   "campaigns": {{"TESTCAMP": {{"use_other_campaign_dnc": "", "local_call_time": "9am-9pm"}}}},
   "phone_codes": [{{"country_code": 1, "areacode": "727", "state": "FL",
                    "gmt_offset": "-5.00", "dst": true, "dst_range": "SSM-FSN"}}],
   "postal_codes": [], "nanpa_prefixes": [],
   "custom_fields": {{"102": [{{"label": "favorite_color", "max": 100}}]}},
   "custom_fields_enabled": true, "call_times": {{"9am-6pm": {{"start": 900, "stop": 1800}}}},
   "servers_local_gmt": "-5.00", "php_timezone": "UTC"}}
  users also take "user_level", "modify_leads" (0-5) and "api_list_restrict".

\b
Try it:
  curl 'http://127.0.0.1:8088/agc/api.php?function=version'
  curl 'http://127.0.0.1:8088/agc/api.php?source=test&user=6666&pass=1234&function=external_add_lead&agent_user=1000&value=7275551212&phone_code=1&first_name=Bob&dnc_check=YES'
  -> SUCCESS: lead added - 7275551212|TESTCAMP|101|1|1000
  curl 'http://127.0.0.1:8088/vicidial/non_agent_api.php?source=test&user=6666&pass=1234&function=add_lead&phone_number=7275551213&list_id=101&duplicate_check=DUPLIST'
  -> SUCCESS: add_lead LEAD HAS BEEN ADDED - 7275551213|101|2|-5.00|6666

\b
Fault kinds for --fail-with (a call fails with probability --fail-rate):
{_KINDS_HELP}

Serves until Ctrl-C or SIGTERM.
"""


def _print_record(record: RequestRecord) -> None:
    # One line per call; the password is never in a record, and a long body is cut.
    phone = record.fields.get("value") or record.fields.get("phone_number") or "-"
    lines = [line for line in record.body.splitlines() if line.strip()]
    # add_lead may print a NOTICE first: show its SUCCESS/ERROR line.
    first = next(
        (x for x in lines if x.startswith(("SUCCESS", "ERROR"))), lines[0] if lines else ""
    )
    first = first or "(empty body)"
    if record.status == 0:
        first = "(no answer)"
    fault = f" [fault {record.fault}]" if record.fault else ""
    function = record.fields.get("function", "-")
    agent = record.fields.get("agent_user", "-")
    click.echo(
        f"#{record.number} {record.method} {function} agent={agent} phone={phone} -> "
        f"{record.status} {first[:160]}{fault}",
        err=True,
    )


@click.command("simulate", help=_HELP, context_settings={"max_content_width": 100})
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8088,
    show_default=True,
    help="Port to listen on (0 picks a free one).",
)
@click.option(
    "--state",
    "state_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON state file (users, agents, campaigns, DNC); default: the demo state.",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay every answer by this many milliseconds.",
)
@click.option(
    "--latency-jitter-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Add a uniform random 0..N ms on top of --latency-ms.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that a call fails with --fail-with.",
)
@click.option(
    "--fail-with",
    type=click.Choice(FAULT_KINDS),
    metavar="KIND",
    default="http_503",
    show_default=True,
    help="Fault kind used by --fail-rate (see the list above).",
)
@click.option("--seed", type=int, help="Seed for the failure and latency RNGs (reproducible runs).")
@click.option(
    "--stall-s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="How long the stall faults hold a connection open.",
)
@click.option(
    "--add-lead-race-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="add_lead's gap between its duplicate check and its INSERT (identical adds "
    "within it all insert, as on VICIdial without a lock).",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not print a line per call.")
def simulate_command(
    host: str,
    port: int,
    state_file: Path | None,
    latency_ms: float,
    latency_jitter_ms: float,
    fail_rate: float,
    fail_with: str,
    seed: int | None,
    stall_s: float,
    add_lead_race_ms: float,
    quiet: bool,
) -> None:
    if state_file is None:
        state, label = SimulatorState.demo(), "demo state"
    else:
        try:
            state = SimulatorState.from_file(state_file)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--state'") from None
        label = str(state_file)

    sim = Simulator(
        state,
        host=host,
        port=port,
        seed=seed,
        stall_s=stall_s,
        on_request=None if quiet else _print_record,
    )
    if latency_ms or latency_jitter_ms:
        sim.set_latency(latency_ms, max_ms=latency_ms + latency_jitter_ms)
    if add_lead_race_ms:
        sim.set_add_lead_race_window(add_lead_race_ms / 1000)
    if fail_rate:
        sim.set_failure_rate(fail_rate, kind=fail_with)
    elif click.get_current_context().get_parameter_source("fail_with") is not (
        click.core.ParameterSource.DEFAULT
    ):
        click.echo("note: --fail-with has no effect without --fail-rate", err=True)
    try:
        sim.start()
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None

    click.echo(f"VICIdial simulator listening on {sim.url}", err=True)
    click.echo(f"state ({label}): {state.summary()}", err=True)
    faults = []
    if latency_ms or latency_jitter_ms:
        faults.append(f"latency {latency_ms:g}..{latency_ms + latency_jitter_ms:g} ms")
    if fail_rate:
        faults.append(f"{fail_rate:g} of calls fail with {fail_with}")
    if add_lead_race_ms:
        faults.append(f"add_lead race window {add_lead_race_ms:g} ms")
    click.echo(f"faults: {', '.join(faults) or 'none'}; Ctrl-C to stop", err=True)

    _serve_until_signalled()
    sim.stop()
    leads = sim.leads
    click.echo(
        f"stopped after {sim.call_count} calls and {sim.lookup_count} Non-Agent calls, "
        f"{len(leads)} leads added",
        err=True,
    )


def _serve_until_signalled() -> None:
    """Block until SIGINT or SIGTERM, without a KeyboardInterrupt traceback."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main() -> None:
    """Entry point of ``python -m dispatcher.simulator``."""
    simulate_command.main(prog_name="python -m dispatcher.simulator")
