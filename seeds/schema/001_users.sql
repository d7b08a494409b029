-- TaskFlow schema 001: users table (CON-003 ERD: users).
-- Core PostgreSQL only (gen_random_uuid() is built in since PostgreSQL 13).

CREATE TABLE users (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
