"""dispatcher/intake: the HTTP intake and its metrics (the console: intake/console/)."""
