"""Fixtures of every test folder, the project's and each integration's: ``redis_url`` (a private redis-server)."""

pytest_plugins = ["tests.redis_server"]
