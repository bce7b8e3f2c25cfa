ALTER TABLE connections DROP COLUMN refresh_claim_until;
ALTER TABLE connections DROP COLUMN refresh_claim_owner;
