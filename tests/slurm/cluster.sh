#!/usr/bin/env bash
# A real single-node SLURM with accounting, for the tests, run the way production
# clusters run it: munge, MariaDB on 127.0.0.1, slurmdbd, slurmctld, slurmd.
# Root, no systemd.
#
#   cluster.sh install      # Debian packages (apt-get)
#   cluster.sh start DIR    # configure and start the daemons; state, logs and PIDs under DIR
#   cluster.sh stop DIR     # stop exactly the daemons that `start DIR` started, by PID
set -euo pipefail

CLUSTER=knnlm
DB_PASS=knnlm-test
MARK="# written by knnlm-limits tests/slurm/cluster.sh"

install() {
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages from starting their daemons: `start` does that, and `stop` undoes it.
    local policy=/usr/sbin/policy-rc.d created=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created=1
    fi
    # A machine image may come with dpkg interrupted mid-configure (seen on CI:
    # "dpkg was interrupted, you must manually run 'dpkg --configure -a'"), which makes
    # every apt-get install fail: finish that first.
    dpkg --configure -a >/dev/null 2>&1 || dpkg --configure -a
    local binary missing=""
    for binary in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
        command -v "$binary" >/dev/null || [[ -x /usr/sbin/$binary ]] || missing=1
    done
    if [[ -n $missing ]]; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends \
            slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null
    fi
    if [[ -n $created ]]; then rm -f "$policy"; fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS > deadline)); then
            echo "cluster.sh: timed out waiting for $what" >&2
            return 1
        fi
        sleep 0.5
    done
}

start() {
    local dir
    dir=$(realpath -m "$1")
    mkdir -p "$dir"/{run,log,ctld,slurmd,mysql}
    chmod 755 "$dir" "$dir"/run "$dir"/log

    # munge: one key, the daemon as the munge user
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    touch "$dir/log/munged.log" && chown munge:munge "$dir/log/munged.log"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/knnlm-munged.pid \
        --socket=/run/munge/munge.socket.2 --log-file="$dir/log/munged.log"
    cp /run/munge/knnlm-munged.pid "$dir/run/munged.pid"
    wait_for 20 munge bash -c 'munge -n | unmunge'

    # MariaDB bound to loopback, its own data directory
    local db="$dir/mysql" sock="$dir/mysqlrun/mysqld.sock"
    mkdir -p "$dir/mysqlrun" && chown mysql:mysql "$db" "$dir/mysqlrun"
    if [[ ! -d "$db/mysql" ]]; then
        mariadb-install-db --user=mysql --datadir="$db" --auth-root-authentication-method=socket >"$dir/log/mariadb-install.log" 2>&1
    fi
    mariadbd --user=mysql --datadir="$db" --bind-address=127.0.0.1 --port=3306 \
        --socket="$sock" --pid-file="$dir/mysqlrun/mysqld.pid" \
        --log-error="$dir/mysqlrun/mariadb.log" &
    wait_for 60 mariadb mariadb --socket="$sock" -e "select 1"
    cp "$dir/mysqlrun/mysqld.pid" "$dir/run/mysqld.pid"
    mariadb --socket="$sock" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"

    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
    mkdir -p /etc/slurm
    cat >/etc/slurm/slurmdbd.conf <<CONF
$MARK
DbdHost=localhost
SlurmUser=root
AuthType=auth/munge
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
CONF
    chmod 600 /etc/slurm/slurmdbd.conf
    cat >/etc/slurm/slurm.conf <<CONF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
DefMemPerCPU=1000
MinJobAge=300
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=localhost CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
CONF

    slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || true
    sacctmgr -i add account "$CLUSTER" Cluster="$CLUSTER" >/dev/null || true
    sacctmgr -i add user root Account="$CLUSTER" Cluster="$CLUSTER" >/dev/null || true
    slurmctld
    wait_for 60 slurmctld scontrol ping
    slurmd -N localhost
    wait_for 60 "an idle node" bash -c "sinfo -h -N -o %t | grep -q idle"
    echo "SLURM cluster $CLUSTER up (state in $dir)"
}

stop() {
    local dir
    dir=$(realpath -m "$1")
    # reverse order of start; each daemon by the PID it wrote
    for name in slurmd slurmctld slurmdbd mysqld munged; do
        local pidfile="$dir/run/$name.pid"
        [[ -s "$pidfile" ]] || continue
        local pid
        pid=$(cat "$pidfile")
        if kill "$pid" 2>/dev/null; then
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
    # Our config files go too: with a slurm.conf but no controller, every SLURM
    # client call (the Snakemake plugin makes some at import) waits ~10 s to time out.
    for conf in /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf; do
        if [[ -f $conf ]] && grep -qxF "$MARK" "$conf"; then rm -f "$conf"; fi
    done
}

case "${1:-}" in
    install) install ;;
    start) start "${2:?state directory}" ;;
    stop) stop "${2:?state directory}" ;;
    *) echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
