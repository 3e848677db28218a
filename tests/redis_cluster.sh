#!/usr/bin/env bash
# Start a Redis Cluster for the tests on loopback: three masters (7000-7002) with one replica
# each (7003-7005), append-only with fsync on every write. Idempotent: a cluster already up
# and healthy is left as it is. Usage: tests/redis_cluster.sh [dir]  (default: a fixed
# directory under ${TMPDIR:-/tmp}, so a second call finds the first one's nodes).
# CLUSTER_FLAVOR=valkey starts a Valkey Cluster instead (valkey-server, ports 7100-7105).
set -euo pipefail

FLAVOR="${CLUSTER_FLAVOR:-redis}"
case "$FLAVOR" in
  redis) PORTS=(7000 7001 7002 7003 7004 7005) ;;
  valkey) PORTS=(7100 7101 7102 7103 7104 7105) ;;
  *) echo "CLUSTER_FLAVOR must be redis or valkey, not $FLAVOR" >&2; exit 2 ;;
esac
SERVER="$FLAVOR-server"
CLI="$FLAVOR-cli"
DIR="${1:-${TMPDIR:-/tmp}/offload-$FLAVOR-cluster}"
HOST=127.0.0.1

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
# Healthy: every slot served, and each of the three masters has its replica attached.
cluster_ok() {
  "$CLI" -h "$HOST" -p "${PORTS[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok' &&
    [ "$("$CLI" -h "$HOST" -p "${PORTS[0]}" cluster nodes 2>/dev/null |
      awk '$3 ~ /slave/ && $3 !~ /fail/ && $8 == "connected"' | wc -l)" -eq 3 ]
}

if cluster_ok; then
  exit 0
fi

mkdir -p "$DIR"
for port in "${PORTS[@]}"; do
  if ! port_open "$port"; then
    mkdir -p "$DIR/$port"
    "$SERVER" --port "$port" --bind "$HOST" --daemonize yes \
      --cluster-enabled yes --cluster-config-file "$DIR/$port/nodes.conf" \
      --cluster-node-timeout 2000 \
      --appendonly yes --appendfsync always --save "" \
      --dir "$DIR/$port" --logfile "$DIR/$port/redis.log" --pidfile "$DIR/$port/redis.pid"
  fi
done
# Up means answering PONG: a restarted node answers LOADING while it reads its append-only file.
pong() { [ "$("$CLI" -h "$HOST" -p "$1" ping 2>/dev/null)" = "PONG" ]; }
for port in "${PORTS[@]}"; do
  for _ in $(seq 1 100); do pong "$port" && break; sleep 0.1; done
  pong "$port" || { echo "$FLAVOR cluster node $port did not come up" >&2; exit 1; }
done

# Nodes that already know each other (a restart of this script after a reboot keeps nodes.conf)
# form the cluster again by themselves; only fresh nodes need creating.
known=$("$CLI" -h "$HOST" -p "${PORTS[0]}" cluster info | sed -n 's/^cluster_known_nodes:\([0-9]*\).*/\1/p')
if [ "${known:-1}" -lt "${#PORTS[@]}" ]; then
  nodes=()
  for port in "${PORTS[@]}"; do nodes+=("$HOST:$port"); done
  "$CLI" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log"
fi
for _ in $(seq 1 300); do
  cluster_ok && exit 0
  sleep 0.2
done
echo "$FLAVOR cluster did not reach cluster_state:ok with three replicas (see $DIR):" >&2
"$CLI" -h "$HOST" -p "${PORTS[0]}" cluster nodes >&2 || true
exit 1
