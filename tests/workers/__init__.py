"""workers/: the runner, the lead engine, the clients, the consumer's transport, notifications."""
