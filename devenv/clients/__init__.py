"""Clients of the three servers: the protocols devenv speaks itself (pgwire, resp), PgBouncer's
admin console (pgbouncer), and `connect`, the one door every session opens through."""
