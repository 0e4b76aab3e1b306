"""edgetune's test plugins (see pyproject.toml for the entry points)."""
