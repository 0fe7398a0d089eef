"""dispatcher/intake/console: the operator console, room by room, and in a real browser."""
