-- Contacts, definitions, journeys and every contact's steps through them.

CREATE TABLE contacts (
    id           bigserial PRIMARY KEY,
    -- contact_id when the import gave one, else 'email:' and the lowered address
    key          text NOT NULL UNIQUE,
    contact_id   text UNIQUE,
    email        text NOT NULL,
    firstname    text NOT NULL DEFAULT '',
    lastname     text NOT NULL DEFAULT '',
    unsubscribed boolean NOT NULL DEFAULT false,
    fields       jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX contacts_by_update ON contacts (updated_at, id);
CREATE INDEX contacts_by_email ON contacts (lower(email));

-- Every column name ever imported, so that checks know the contact fields.
CREATE TABLE contact_fields (
    name text PRIMARY KEY
);

-- Published segments, emails and content settings, one row per name.
CREATE TABLE definitions (
    kind       text NOT NULL,
    name       text NOT NULL,
    status     text NOT NULL CHECK (status IN ('draft', 'live')),
    revision   integer NOT NULL DEFAULT 1,
    body       jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

CREATE TABLE journeys (
    id            serial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    status        text NOT NULL CHECK (status IN ('live', 'stopped', 'completed')),
    version       integer NOT NULL,
    timezone      text NOT NULL,
    start_at      timestamptz NOT NULL,
    end_at        timestamptz NOT NULL,
    -- keyset cursor of the segment feeding: (updated_at, id) of the last contact read
    feed_after_at timestamptz NOT NULL DEFAULT 'epoch',
    feed_after_id bigint NOT NULL DEFAULT 0,
    ended_at      timestamptz,
    published_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE journey_versions (
    journey_id   integer NOT NULL REFERENCES journeys,
    version      integer NOT NULL,
    definition   jsonb NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (journey_id, version)
);

-- One row per contact that entered a journey: the contact enters it once.
CREATE TABLE entries (
    journey_id integer NOT NULL REFERENCES journeys,
    contact    bigint NOT NULL,
    version    integer NOT NULL,
    state      text NOT NULL DEFAULT 'in_progress'
               CHECK (state IN ('in_progress', 'completed', 'left', 'stopped')),
    reason     text,
    entered_at timestamptz NOT NULL,
    left_at    timestamptz,
    PRIMARY KEY (journey_id, contact)
);
CREATE INDEX entries_in_progress ON entries (journey_id) WHERE state = 'in_progress';

-- One row per (journey, tile, contact): the step record that makes every tile
-- effectively once. A tile claims a step by moving it out of 'in_progress'.
CREATE TABLE steps (
    journey_id integer NOT NULL,
    tile       text NOT NULL,
    contact    bigint NOT NULL,
    version    integer NOT NULL,
    state      text NOT NULL
               CHECK (state IN ('in_progress', 'completed', 'stopped', 'failed')),
    outcome    text,
    reason     text,
    entered_at timestamptz NOT NULL,
    done_at    timestamptz,
    PRIMARY KEY (journey_id, tile, contact)
);
CREATE INDEX steps_in_progress ON steps (journey_id, tile) WHERE state = 'in_progress';

-- Messages written in the same transaction as a step, published after commit.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    journey_id integer NOT NULL,
    version    integer NOT NULL,
    tile       text NOT NULL,
    contact    bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_by_age ON outbox (created_at);

-- One row per email the email tile tried to send. 'sending' is committed before
-- the SMTP conversation starts, so a crash leaves evidence of the unknown outcome.
CREATE TABLE sends (
    journey_id  integer NOT NULL,
    tile        text NOT NULL,
    contact     bigint NOT NULL,
    address     text NOT NULL,
    state       text NOT NULL
                CHECK (state IN ('sending', 'accepted', 'rejected', 'deferred', 'unconfirmed')),
    message_id  text,
    smtp_code   integer,
    smtp_reply  text,
    attempts    integer NOT NULL DEFAULT 1,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    PRIMARY KEY (journey_id, tile, contact)
);
CREATE UNIQUE INDEX sends_one_per_address ON sends (journey_id, tile, lower(address));
