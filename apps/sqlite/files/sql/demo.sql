-- A script packed into the image (configs/*.toml: files = "../apps/sqlite/files").
-- Run it with: flexos run configs/sqlite.toml -- --script /sql/demo.sql
CREATE TABLE IF NOT EXISTS planets (name TEXT PRIMARY KEY, moons INTEGER NOT NULL);
DELETE FROM planets;
INSERT INTO planets VALUES ('Mercury', 0), ('Venus', 0), ('Earth', 1), ('Mars', 2), ('Jupiter', 95);
SELECT name, moons FROM planets WHERE moons > 0 ORDER BY moons DESC;
SELECT count(*), sum(moons) FROM planets;
