#!/bin/bash
# Runs once, on a replica's first start (mounted into /docker-entrypoint-initdb.d), after the
# image's entrypoint has set the root password. Points the replica at the primary with GTID
# replication and starts it; the slave threads restart by themselves on every later start.
# The users (millilag, repl) arrive from the primary's binlog: nothing is created here.
# The entrypoint either runs this file (executable) or sources it: it works both ways.
set -eo pipefail

: "${REPLICATION_PRIMARY:?REPLICATION_PRIMARY (host name of the primary) is not set}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD is not set}"
REPLICATION_USER="${REPLICATION_USER:-repl}"

sql_literal() {
	local s=${1//\\/\\\\}
	printf '%s' "${s//\'/\\\'}"
}

MYSQL_PWD="${MARIADB_ROOT_PASSWORD}" mariadb --protocol=socket -uroot -hlocalhost \
	--socket="${SOCKET:-/run/mysqld/mysqld.sock}" <<SQL
CHANGE MASTER TO
  MASTER_HOST='$(sql_literal "${REPLICATION_PRIMARY}")',
  MASTER_PORT=${REPLICATION_PRIMARY_PORT:-3306},
  MASTER_USER='$(sql_literal "${REPLICATION_USER}")',
  MASTER_PASSWORD='$(sql_literal "${REPLICATION_PASSWORD}")',
  MASTER_USE_GTID=slave_pos,
  MASTER_CONNECT_RETRY=1;
START SLAVE;
SQL
