-- Every step and entry is written once as 'in_progress' and updated once or
-- twice after. The partial indexes on that state kept those updates from
-- being HOT (every update wrote new index entries) and misled the planner
-- into scanning all in-progress rows of a tile for a batch of contacts.
-- Ending a journey, their one real user, reads the journey's rows through
-- the primary key instead. Free space on each page lets the update stay on
-- the page of the row it replaces.
DROP INDEX IF EXISTS steps_in_progress;
DROP INDEX IF EXISTS entries_in_progress;
ALTER TABLE steps SET (fillfactor = 80);
ALTER TABLE entries SET (fillfactor = 80);
