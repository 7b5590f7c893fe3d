"""Integrations of rockstar-mp with frameworks and servers other than gunicorn (each imports its framework lazily)."""
