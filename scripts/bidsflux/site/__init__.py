"""The site as data: YAML with positions, schemas, cross checks, rendering of templates."""
