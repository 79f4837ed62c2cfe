"""The suite's command-line tools (installed as console scripts; see pyproject.toml)."""
