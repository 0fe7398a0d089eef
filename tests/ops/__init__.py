"""dispatcher/ops: producing jobs (API, CLI, intake), erasure, retention."""
