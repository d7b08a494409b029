"""The data: schema and seed files with their ledger (seeds), the seeded template (template),
databases cloned from it and reset back to it (janitor, reset), Redis's seed (redis_seed),
snapshots, dumps, and the seeded data directory cache (cache)."""
