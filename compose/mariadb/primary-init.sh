#!/bin/bash
# Runs once, on the primary's first start (mounted into /docker-entrypoint-initdb.d), after the
# image's entrypoint has set the root password, on its temporary socket-only server.
# These statements are binlogged on purpose: the replicas replicate from the primary's first
# binlog (MASTER_USE_GTID=slave_pos with an empty gtid_slave_pos), so the users reach them too.
# The entrypoint either runs this file (executable) or sources it: it works both ways.
set -eo pipefail

: "${MILLILAG_DB_PASSWORD:?MILLILAG_DB_PASSWORD is not set}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD is not set}"
REPLICATION_USER="${REPLICATION_USER:-repl}"

# SQL string literal body: backslashes and single quotes escaped.
sql_literal() {
	local s=${1//\\/\\\\}
	printf '%s' "${s//\'/\\\'}"
}

MYSQL_PWD="${MARIADB_ROOT_PASSWORD}" mariadb --protocol=socket -uroot -hlocalhost \
	--socket="${SOCKET:-/run/mysqld/mysqld.sock}" <<SQL
-- Replication: the replicas' IO threads log in with this user.
CREATE USER '${REPLICATION_USER}'@'%' IDENTIFIED BY '$(sql_literal "${REPLICATION_PASSWORD}")';
GRANT REPLICATION SLAVE ON *.* TO '${REPLICATION_USER}'@'%';

-- millilag: exactly the privileges in README.md, "Database privileges" (tests/e2e/compose.rs
-- checks that these lines match the README). The writer creates the millilag database and the
-- heartbeat table itself (create_table = true).
CREATE USER 'millilag'@'%' IDENTIFIED BY '$(sql_literal "${MILLILAG_DB_PASSWORD}")';
GRANT SELECT, INSERT, UPDATE, CREATE ON \`millilag\`.* TO 'millilag'@'%';
GRANT BINLOG REPLAY ON *.* TO 'millilag'@'%';
GRANT SLAVE MONITOR ON *.* TO 'millilag'@'%';
GRANT REPLICATION MASTER ADMIN ON *.* TO 'millilag'@'%';
SQL
