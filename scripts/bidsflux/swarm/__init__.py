"""Docker Swarm: desired/observed state, plan, deploy and hand-off, secrets, bootstrap, preflight."""
