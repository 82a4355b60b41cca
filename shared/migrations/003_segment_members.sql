-- Members of segments whose membership other systems publish on a queue.
-- A member is named by contact id or lowered address, so an addition may
-- arrive before the contact itself does.
CREATE TABLE segment_members (
    segment    text NOT NULL,
    identifier text NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (segment, identifier)
);
