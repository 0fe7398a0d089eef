"""dispatcher/model: the lead rules (both APIs), list options, jobs (pure, no server)."""
