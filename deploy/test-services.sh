#!/usr/bin/env bash
# PostgreSQL, Redis and RabbitMQ on 127.0.0.1, as the distributed profile's tests want them (`make services`,
# which `make test` runs first). For each one that does not answer:
#   - installed: started with the Debian package's own command (as root; otherwise the command is printed);
#   - missing, as root (CI): installed from Debian's packages (postgresql, redis-server, rabbitmq-server),
#     configured as the tests expect (PostgreSQL: trust authentication on 127.0.0.1 for user postgres; RabbitMQ:
#     its default guest/guest, which may connect from loopback) and started;
#   - missing, not root: one line says so; the tests that need it are skipped, saying `sudo make services`.
# Prints nothing where everything already answers. Never fails `make test` by itself: a service that still does
# not answer is reported here, and its tests fail (root) or are skipped (not root) saying why.
set -u

as_root() { [ "$(id -u)" = 0 ]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for SECONDS COMMAND...: true as soon as COMMAND succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

apt_updated=
apt_install() {   # quiet unless it fails, then the end of apt-get's output
    local log
    log=$(mktemp)
    if [ -z "$apt_updated" ]; then
        apt-get update -qq >"$log" 2>&1 || echo "note: apt-get update failed; installing from the package lists at hand"
        apt_updated=1
    fi
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$log" 2>&1; then
        rm -f "$log"
    else
        tail -n 20 "$log"
        rm -f "$log"
        return 1
    fi
}

# ---------------------------------------------------------------- PostgreSQL
pg_cluster() { ls -d /etc/postgresql/*/main 2>/dev/null | head -n 1; }   # /etc/postgresql/<version>/main
pg_answers() {
    if command -v pg_isready >/dev/null; then pg_isready -q -h 127.0.0.1 -p 5432; else port_open 5432; fi
}
pg_start() {
    local version
    version=$(basename "$(dirname "$(pg_cluster)")")
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    wait_for 30 pg_answers
}
pg_trust_loopback() {   # the tests connect as postgres over TCP without a password
    local hba
    hba="$(pg_cluster)/pg_hba.conf"
    grep -q '^host all postgres 127.0.0.1/32 trust' "$hba" && return
    sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    local version
    version=$(basename "$(dirname "$(pg_cluster)")")
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload >/dev/null 2>&1 || true
}

if ! pg_answers; then
    if [ -n "$(pg_cluster)" ]; then
        if ! as_root; then
            version=$(basename "$(dirname "$(pg_cluster)")")
            echo "note: PostgreSQL is installed but not running; start it with:" \
                "sudo pg_ctlcluster --skip-systemctl-redirect $version main start"
        elif pg_start; then
            echo "started PostgreSQL"
        else
            echo "error: PostgreSQL did not start; its log is under /var/log/postgresql/"
        fi
    elif as_root; then
        if apt_install postgresql && [ -n "$(pg_cluster)" ]; then
            pg_answers || pg_start
            pg_trust_loopback
            if wait_for 30 pg_answers; then echo "installed PostgreSQL (Debian's postgresql) and started it"
            else echo "error: PostgreSQL was installed but does not answer on 127.0.0.1:5432"; fi
        else
            echo "error: installing Debian's postgresql failed"
        fi
    else
        echo "note: PostgreSQL is not installed; the tests that need it will be skipped" \
            "(sudo make services installs it)"
    fi
fi

# ---------------------------------------------------------------- Redis
redis_answers() {
    if command -v redis-cli >/dev/null; then
        [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]
    else
        port_open 6379
    fi
}
redis_start() {
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    wait_for 15 redis_answers
}

if ! redis_answers; then
    if command -v redis-server >/dev/null; then
        if redis_start; then echo "started Redis"; else echo "error: Redis did not start"; fi
    elif as_root; then
        if apt_install redis-server; then
            if redis_answers || redis_start; then echo "installed Redis (Debian's redis-server) and started it"
            else echo "error: Redis was installed but does not answer on 127.0.0.1:6379"; fi
        else
            echo "error: installing Debian's redis-server failed"
        fi
    else
        echo "note: Redis is not installed; the tests that need it will be skipped (sudo make services installs it)"
    fi
fi

# ---------------------------------------------------------------- RabbitMQ
rabbitmq_answers() { port_open 5672; }
rabbitmq_start() {
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_for 90 rabbitmq_answers
}

if ! rabbitmq_answers; then
    if command -v rabbitmq-server >/dev/null; then
        if ! as_root; then
            echo "note: RabbitMQ is installed but not running; start it with: sudo rabbitmq-server -detached"
        elif rabbitmq_start; then
            echo "started RabbitMQ"
        else
            echo "error: RabbitMQ did not start; its log is under /var/log/rabbitmq/"
        fi
    elif as_root; then
        if apt_install rabbitmq-server; then
            # The package may have started it already; it opens its port some seconds after.
            if wait_for 20 rabbitmq_answers || rabbitmq_start; then
                echo "installed RabbitMQ (Debian's rabbitmq-server) and started it"
            else
                echo "error: RabbitMQ was installed but does not answer on 127.0.0.1:5672"
            fi
        else
            echo "error: installing Debian's rabbitmq-server failed"
        fi
    else
        echo "note: RabbitMQ is not installed; the tests that need it will be skipped (sudo make services installs it)"
    fi
fi
exit 0
