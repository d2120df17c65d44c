-- The latest signed head of each chain: (seq, hash) signed with the audit key by the node
-- that wrote it, at most a second after. A checkpoint kept once per chain and replaced as
-- the chain grows (never by an older one), so that everything older than a second is
-- covered by a signature, without a row per signature.
CREATE TABLE audit_signed_heads (
    org_id     BLOB    PRIMARY KEY,
    seq        INTEGER NOT NULL,
    hash       BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    signature  BLOB    NOT NULL
);
