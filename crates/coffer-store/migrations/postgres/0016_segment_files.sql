-- Segments encrypted with age (docs/audit.md, "Encrypted segments"). `sha256` stays the
-- digest of the plaintext (what the next segment's header names and what verification
-- recomputes); `file_sha256` is the digest of the bytes on disk, and each range keeps its
-- anchor's signature, so that the server can prune a segment it cannot decrypt once the
-- file is byte for byte the one it verified while writing. NULL for rows recorded before
-- these columns: their file is their plaintext, which pruning reads.
ALTER TABLE audit_segments ADD COLUMN file_sha256 BYTEA;
ALTER TABLE audit_segment_chains ADD COLUMN anchor_created_at BIGINT;
ALTER TABLE audit_segment_chains ADD COLUMN anchor_signature BYTEA;
