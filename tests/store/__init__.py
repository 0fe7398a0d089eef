"""dispatcher/store: Redis keys, the Lua scripts' commands, the layout, Redis at its limits."""
