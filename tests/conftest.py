"""Shared fixtures: a real redis-server and a real single-node Slurm cluster."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.slurm_cluster",
    "tests.fixtures.browser",
    "tests.fixtures.admin_server",
]
