-- Seed at scale: :scale generated TaskFlow tasks (and one user per 50 tasks) on top of the
-- seed files, for profiles with `seed_scale: N` (devenv.yaml). Deterministic: ids are md5s of
-- their ordinal, so the same N gives the same database. Run by devenv with :scale replaced.
INSERT INTO users (id, email, password_hash, created_at)
SELECT md5('scale-user-' || i)::uuid,
       'user' || i || '@scale.taskflow.dev',
       '$2a$10$devonlydevonlydevonlyde.8u9mQeWlI4yO0Zr2kq5uQ3Kc5nXW',  -- dev-only, not a real hash
       timestamptz '2025-01-01' + make_interval(mins => i)
FROM generate_series(1, greatest(1, :scale / 50)) AS i;

INSERT INTO tasks (id, user_id, title, description, status, due_date, metadata, created_at)
SELECT md5('scale-task-' || i)::uuid,
       md5('scale-user-' || (1 + i % greatest(1, :scale / 50)))::uuid,
       (ARRAY['Fix', 'Review', 'Write', 'Deploy', 'Refactor', 'Investigate', 'Document', 'Plan'])[1 + i % 8] || ' ' ||
       (ARRAY['invoice export', 'billing retries', 'search ranking', 'login flow', 'webhook delivery',
              'rate limiter', 'dashboard charts', 'onboarding emails', 'task reminders', 'audit log'])[1 + i % 10],
       CASE WHEN i % 4 = 0 THEN NULL ELSE 'Generated task ' || i || ': see the ' ||
            (ARRAY['backend', 'frontend', 'payments', 'infra', 'mobile'])[1 + i % 5] || ' board for context.' END,
       (ARRAY['todo', 'in_progress', 'blocked', 'done', 'archived'])[1 + i % 5],
       CASE WHEN i % 7 = 0 THEN NULL ELSE timestamptz '2025-06-01' + make_interval(days => i % 900) END,
       jsonb_build_object('priority', (ARRAY['low', 'medium', 'high'])[1 + i % 3],
                          'labels', jsonb_build_array((ARRAY['backend', 'billing', 'search', 'ui', 'ops'])[1 + i % 5]),
                          'estimate_hours', 1 + i % 13),
       timestamptz '2025-01-01' + make_interval(mins => i)
FROM generate_series(1, :scale) AS i;
