"""Health checks of a running site: one module per check, a runner and its reports."""
