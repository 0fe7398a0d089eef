"""dispatcher/simulator: the VICIdial simulator, byte for byte against the facts."""
