-- TaskFlow schema 003: search indexes (CON-003 features "Full-text search" and "JSON/JSONB columns").
--
-- tasks_search_idx is an expression index. The planner only uses it when the
-- query's WHERE clause repeats the indexed expression exactly, e.g.:
--
--   SELECT id, title
--   FROM tasks
--   WHERE to_tsvector('english', title || ' ' || coalesce(description, ''))
--         @@ plainto_tsquery('english', 'invoice');
--
-- (websearch_to_tsquery('english', ...) / to_tsquery('english', ...) work the
-- same way on the right-hand side; the left-hand side must stay as written,
-- including the explicit 'english' config.)
--
-- tasks_metadata_idx uses jsonb_path_ops, so it serves containment (@>) and
-- jsonpath (@?, @@) queries, e.g.:
--
--   SELECT id FROM tasks WHERE metadata @> '{"priority": "high"}';
--
-- It does NOT serve key-existence operators (?, ?|, ?&).

CREATE INDEX tasks_search_idx ON tasks
    USING gin (to_tsvector('english', title || ' ' || coalesce(description, '')));

CREATE INDEX tasks_metadata_idx ON tasks
    USING gin (metadata jsonb_path_ops);
