-- Every delivery that could not be stored as an event, whole.
CREATE TABLE dead_letter (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- sha256 of exchange, routing key, message id and body: a redelivery is one row
    fingerprint  bytea NOT NULL UNIQUE,
    received_at  timestamptz NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    exchange     text NOT NULL,
    routing_key  text NOT NULL,
    properties   json NOT NULL,
    body         bytea NOT NULL,
    reason       text NOT NULL,
    detail       text NOT NULL
);

CREATE INDEX dead_letter_received_idx ON dead_letter (received_at DESC);
CREATE INDEX dead_letter_reason_idx ON dead_letter (reason, received_at DESC);
