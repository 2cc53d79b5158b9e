-- Receipt state of ordinary messages a device chose to send through clinkd
-- (timed messages are never written here). Only who, which message id and
-- when: never content. Rows older than receipts.retention are deleted.
CREATE TABLE receipts_tracked (
    sender       text        NOT NULL, -- bare JID of the sender
    id           text        NOT NULL, -- the envelope's message id
    recipient    text        NOT NULL, -- bare JID of the recipient
    sent_at      timestamptz NOT NULL,
    delivered_at timestamptz,          -- first XEP-0184 receipt
    displayed_at timestamptz,          -- first XEP-0333 displayed marker
    PRIMARY KEY (sender, id, recipient)
);
CREATE INDEX receipts_tracked_sent_at ON receipts_tracked (sent_at);
CREATE INDEX receipts_tracked_sender_sent_at ON receipts_tracked (sender, sent_at);
