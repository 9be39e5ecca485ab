-- Creates Shaken Fist's database and user. Idempotent: safe to run again.
--
--   sudo mariadb < tools/bootstrap-mariadb.sql
--
-- Change the password before running it (or afterwards with
-- `ALTER USER 'shakenfist'@'%' IDENTIFIED BY '...'`), and give it to the daemons as
-- SHAKENFIST_MARIADB_PASSWORD. Then create the tables with
-- `sf-ctl ensure-mariadb-schema`.

CREATE DATABASE IF NOT EXISTS shakenfist
  CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- Re-running never changes the character set of an existing database silently; this
-- statement does, and is harmless when it is already right.
ALTER DATABASE shakenfist CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

CREATE USER IF NOT EXISTS 'shakenfist'@'localhost' IDENTIFIED BY 'change-me';
CREATE USER IF NOT EXISTS 'shakenfist'@'%' IDENTIFIED BY 'change-me';

-- Everything on its own database, nothing elsewhere. sf-ctl needs the DDL rights;
-- sf-database needs only SELECT, INSERT, UPDATE, DELETE.
GRANT ALL PRIVILEGES ON shakenfist.* TO 'shakenfist'@'localhost';
GRANT ALL PRIVILEGES ON shakenfist.* TO 'shakenfist'@'%';
FLUSH PRIVILEGES;
