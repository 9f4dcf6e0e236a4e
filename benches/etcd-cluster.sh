#!/usr/bin/env bash
# Starts or stops a 3-member etcd 3.4 cluster on loopback, the baseline of `natter-bench`.
#
#   benches/etcd-cluster.sh start DIR   members m1..m3 with data in DIR/m1..m3, logs in
#                                       DIR/m1.log.., pids in DIR/m1.pid..; waits until every
#                                       member is healthy and writes the client URLs,
#                                       comma-separated, to DIR/endpoints
#   benches/etcd-cluster.sh stop DIR    stops the members started with DIR (TERM, then KILL)
#
# Ports: clients on ETCD_BASE_PORT+1..3, peers on ETCD_BASE_PORT+11..13, all on 127.0.0.1
# (ETCD_BASE_PORT defaults to 23790). DIR must be on a real disk: etcd fsyncs every commit,
# and that is what the baseline measures.
#
# etcd comes from Debian's etcd-server package (3.4.x on bookworm); as root, a missing etcd is
# installed with apt-get.
set -euo pipefail

MEMBERS=3
BASE_PORT="${ETCD_BASE_PORT:-23790}"
HEALTH_TIMEOUT_SECONDS=30
STOP_TIMEOUT_SECONDS=10

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}

[[ $# -eq 2 ]] || usage
action="$1"
dir="$2"

client_url() { echo "http://127.0.0.1:$((BASE_PORT + $1))"; }
peer_url() { echo "http://127.0.0.1:$((BASE_PORT + 10 + $1))"; }

ensure_etcd() {
    if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
        return
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "etcd is not installed; install Debian's etcd-server and etcd-client packages" >&2
        exit 1
    fi
    echo "installing etcd-server and etcd-client" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y etcd-server etcd-client >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y etcd-server etcd-client >/dev/null; }
}

port_in_use() {
    # A successful connect means something already listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    ensure_etcd
    mkdir -p "$dir"
    local cluster="" endpoints="" i
    for i in $(seq 1 "$MEMBERS"); do
        for port in $((BASE_PORT + i)) $((BASE_PORT + 10 + i)); do
            if port_in_use "$port"; then
                echo "port $port on 127.0.0.1 is in use; set ETCD_BASE_PORT" >&2
                exit 1
            fi
        done
        cluster+="${cluster:+,}m$i=$(peer_url "$i")"
        endpoints+="${endpoints:+,}$(client_url "$i")"
    done
    for i in $(seq 1 "$MEMBERS"); do
        # setsid: the members outlive this script, and a Ctrl-C in the caller's terminal does
        # not reach them; `stop` ends them by pid.
        setsid etcd \
            --name "m$i" \
            --data-dir "$dir/m$i" \
            --listen-client-urls "$(client_url "$i")" \
            --advertise-client-urls "$(client_url "$i")" \
            --listen-peer-urls "$(peer_url "$i")" \
            --initial-advertise-peer-urls "$(peer_url "$i")" \
            --initial-cluster "$cluster" \
            --initial-cluster-token natter-bench \
            --initial-cluster-state new \
            --logger zap --log-level warn \
            >"$dir/m$i.log" 2>&1 </dev/null &
        echo $! >"$dir/m$i.pid"
    done
    local waited=0
    until ETCDCTL_API=3 etcdctl --endpoints "$endpoints" --command-timeout 2s endpoint health >/dev/null 2>&1; do
        if ((waited >= HEALTH_TIMEOUT_SECONDS * 10)); then
            echo "etcd not healthy after ${HEALTH_TIMEOUT_SECONDS}s; logs in $dir/m*.log" >&2
            stop
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "$endpoints" >"$dir/endpoints"
    echo "etcd $(etcd --version | head -n 1 | awk '{print $3}'): $MEMBERS members healthy at $endpoints" >&2
}

# True if `pid` is a running etcd process: a recycled pid is left alone, and an exited member
# that nobody has reaped yet (a zombie) counts as stopped.
is_our_etcd() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $stat == *"(etcd) "* ]] && [[ ${stat#*) } != Z* ]]
}

stop() {
    local pidfile pid pids=() waited=0
    for pidfile in "$dir"/m*.pid; do
        [[ -e $pidfile ]] || continue
        pid=$(cat "$pidfile")
        if is_our_etcd "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$pidfile"
    done
    for pid in "${pids[@]}"; do
        while is_our_etcd "$pid"; do
            if ((waited >= STOP_TIMEOUT_SECONDS * 10)); then
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
    done
    echo "etcd stopped (${#pids[@]} members)" >&2
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
