"""What the tests share, named for what each module holds (imported, never collected).

``settings`` (ROOT, FAST, make_settings), ``waiting`` (wait_for), ``queues`` (what waits
in the broker's lists), ``rates`` (calls per second), ``cli`` (the installed
``dispatcher`` command), ``intake`` (the HTTP intake in a thread), ``engine`` (the lead
engine in-process), ``leads`` (lead tables and the documented normalisations),
``strategies`` (hypothesis strategies for leads near what VICIdial keeps, both APIs),
``console`` (users, logins and page readers), ``layout`` (a migration race's
contestant), and the real network parts: ``faultproxy``, ``tlsproxy``, ``receiver``.
Fixtures stay in the ``conftest.py`` files; they import their helpers from here.
"""
