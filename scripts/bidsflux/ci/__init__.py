"""The self-management pipeline's helpers: plan notes, health and drift issues."""
