"""The deployment files: parsed and run as written, and compose on a real Docker engine."""
