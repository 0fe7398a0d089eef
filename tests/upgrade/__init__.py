"""The previous release: its Redis served by this one, and a rolling restart between them."""
