"""dispatcher/vicidial: reconciliation's reading of the Non-Agent API and its decision."""
