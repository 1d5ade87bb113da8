-- Single-use tickets for the live tail in a browser (EventSource cannot send an
-- Authorization header): POST /events/stream/tickets issues one, valid for 60 s;
-- GET /events/stream?ticket= spends it. Only the SHA-256 of a ticket is stored, so
-- this table cannot be read back into tickets; any instance can spend any ticket.
CREATE TABLE stream_tickets (
    digest     bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
