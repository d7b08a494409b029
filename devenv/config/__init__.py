"""Configuration: devenv.yaml -> Config (settings), checked against PostgreSQL's catalogue
(pgcatalog), resolved for a profile into the one Stack model (resolve -> stack), with the
project's generated secrets (secrets) and where its files are (project)."""
