-- TaskFlow schema 004: LISTEN/NOTIFY on task changes (CON-003 feature "LISTEN/NOTIFY").
--
-- Every INSERT/UPDATE/DELETE on tasks sends a notification on channel
-- 'task_changes' with a JSON payload such as:
--   {"op" : "UPDATE", "id" : "<uuid>", "user_id" : "<uuid>", "status" : "done"}
-- op is TG_OP ('INSERT', 'UPDATE' or 'DELETE'); the row is NEW for
-- insert/update and OLD for delete. Notifications are delivered on commit.
-- Consumers: LISTEN task_changes;

CREATE FUNCTION notify_task_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    r tasks;
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;

    PERFORM pg_notify(
        'task_changes',
        json_build_object(
            'op',      TG_OP,
            'id',      r.id,
            'user_id', r.user_id,
            'status',  r.status
        )::text
    );

    RETURN NULL;  -- result is ignored for AFTER ... FOR EACH ROW triggers
END;
$$;

CREATE TRIGGER tasks_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW
    EXECUTE FUNCTION notify_task_change();
