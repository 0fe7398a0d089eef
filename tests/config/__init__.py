"""dispatcher/config: settings, logs and redaction (the redactor over every path)."""
