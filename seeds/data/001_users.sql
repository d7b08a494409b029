-- TaskFlow seed data 001: development users.
--
-- DEV-ONLY DATA. Every password_hash below is a bcrypt hash ($2a$, cost 10) of
-- the same password: taskflow-dev
-- (computed once with pgcrypto's crypt('taskflow-dev', gen_salt('bf', 10)) and
-- pasted as literals; this file needs no extension). Never load into production.
--
-- Ids are fixed so tests can refer to them:
--   00000000-0000-4000-8000-00000000000N  for user N (1..8).
-- created_at values are fixed literals (never now()) so data is reproducible.

INSERT INTO users (id, email, password_hash, created_at) VALUES
    -- Alice Nguyen, billing engineer (has tasks in every status)
    ('00000000-0000-4000-8000-000000000001', 'alice@taskflow.dev',
     '$2a$10$5vNPuNZLFm/5wXMNnWTnH.y86xLy5DyWpsFJ.2GO5EFp4K.QQYecG', '2024-01-08 09:15:00+00'),
    -- Bob Martinez, DevOps / infrastructure
    ('00000000-0000-4000-8000-000000000002', 'bob@taskflow.dev',
     '$2a$10$QZANizR1ztVjisMrFZNqVe9i40pP.319gAkuRG77F3sgyQmDrBdlu', '2024-01-08 09:42:00+00'),
    -- Carol Okafor, frontend engineer
    ('00000000-0000-4000-8000-000000000003', 'carol@taskflow.dev',
     '$2a$10$J3mAZm9wJh4.HtGFP.cCCu1shmqultV1R.PAYyWoROgkeYC2ratV.', '2024-01-15 14:03:00+00'),
    -- Dave Kowalski, backend engineer
    ('00000000-0000-4000-8000-000000000004', 'dave@taskflow.dev',
     '$2a$10$pKy26qadG2JQdrHP5h4sC.n9oUuEKms3zOQ/DNxrHXig0SVlsGurK', '2024-01-22 10:30:00+00'),
    -- Erin Lindqvist, product manager
    ('00000000-0000-4000-8000-000000000005', 'erin@taskflow.dev',
     '$2a$10$3QZllshlgACHifG45v3OIOzexklfzU1XoHQrjnQNy45QOYWgXfpBi', '2024-02-01 08:55:00+00'),
    -- Frank Osei, QA engineer
    ('00000000-0000-4000-8000-000000000006', 'frank@taskflow.dev',
     '$2a$10$1fQdNpdP.nQANpp7ep5x4uQxYjWSi4oDKkXZYCM31VLIDIMzez5Fy', '2024-02-12 16:20:00+00'),
    -- Grace Huang, customer support lead
    ('00000000-0000-4000-8000-000000000007', 'grace@taskflow.dev',
     '$2a$10$mtgwqoS0xtS6.ksHPYGPKuWMLg9GAjaC8yPSLGfYgcHVAloKK.uyi', '2024-02-26 11:05:00+00'),
    -- Heidi Schmidt, data & security engineer
    ('00000000-0000-4000-8000-000000000008', 'heidi@taskflow.dev',
     '$2a$10$65ZQWujxZ/Dm6j.59a/GMOilpEcBseruAQXDwzx0pm.YBgPkOpEjK', '2024-03-04 13:48:00+00');
