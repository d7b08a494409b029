"""devenv: TaskFlow's PostgreSQL + PgBouncer + Redis stack for laptops, tests and CI."""

__version__ = "0.1.0"
