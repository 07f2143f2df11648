"""Mercure: rules, its configuration model, files under its lock, its compose project."""
