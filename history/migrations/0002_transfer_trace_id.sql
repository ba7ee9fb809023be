-- The W3C trace id of the request that made each transfer (the HTTP gateway's `traceparent`,
-- carried through the binary protocol and journaled with the transfer's event; see
-- docs/PROTOCOL.md, "Traced requests"). NULL when the request carried none: every transfer
-- journaled before traces existed, and those of clients that do not send them.
ALTER TABLE transfers ADD COLUMN trace_id uuid;
