-- TaskFlow schema 002: tasks table (CON-003 ERD: tasks; users ||--o{ tasks : owns).
-- metadata is the flexible JSONB task metadata (CON-003 feature "JSON/JSONB columns").

CREATE TABLE tasks (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title       text        NOT NULL,
    description text,
    status      text        NOT NULL DEFAULT 'todo'
                CONSTRAINT tasks_status_check
                CHECK (status IN ('todo', 'in_progress', 'blocked', 'done', 'archived')),
    due_date    timestamptz,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tasks_user_id_idx ON tasks (user_id);
