-- Waits and condition timeouts, email interactions, and what tracking needs.

ALTER TABLE contacts ADD COLUMN bounced_at timestamptz;

-- A contact held at a wait or condition tile until due_at. Condition rows also
-- say which interaction moves the contact on before then.
CREATE TABLE timers (
    journey_id  integer NOT NULL,
    tile        text NOT NULL,
    contact     bigint NOT NULL,
    version     integer NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('wait', 'condition')),
    due_at      timestamptz NOT NULL,
    watch_tile  text,
    watch_event text,
    watch_link  text,
    PRIMARY KEY (journey_id, tile, contact)
);
CREATE INDEX timers_by_due ON timers (due_at);
CREATE INDEX timers_watching ON timers (journey_id, contact) WHERE kind = 'condition';

-- Each send gets a number for its tracking tokens, and keeps the addresses
-- its links pointed at, so a click can only lead where the email led.
ALTER TABLE sends ADD COLUMN id bigserial UNIQUE;
ALTER TABLE sends ADD COLUMN links jsonb NOT NULL DEFAULT '[]';
CREATE INDEX sends_by_message_id ON sends (message_id);

CREATE TABLE interactions (
    id         bigserial PRIMARY KEY,
    journey_id integer NOT NULL,
    tile       text NOT NULL,
    contact    bigint NOT NULL,
    send_id    bigint,
    kind       text NOT NULL CHECK (kind IN ('opened', 'clicked', 'unsubscribed', 'bounced')),
    link       text,
    hard       boolean,
    at         timestamptz NOT NULL,
    source     text NOT NULL DEFAULT 'tracking'
);
CREATE INDEX interactions_by_contact ON interactions (journey_id, contact, tile, kind);
CREATE INDEX interactions_by_tile ON interactions (journey_id, tile, kind);
