#!/usr/bin/env bash
# A one-node Slurm cluster in a temporary folder, for deploy/test/slurm-ci.sh (sourced, not run).
#
# slurm_start DIR writes slurm.conf into DIR (this host's name, free ports, no cgroups:
# containers and CI machines often have no systemd and no writable cgroup tree), starts munged,
# slurmctld and slurmd on it with every state, spool, log and pid file inside DIR, exports
# SLURM_CONF for the client commands, and waits (bounded) until the node takes jobs.
# slurm_stop stops the daemons it started, by their pid files; the caller removes DIR.

# Root runs everything here (SlurmUser=root): the daemons need no account of their own.
slurm_start() {
    local dir=$1
    mkdir -p "$dir"/{munge,state,spool,log}
    chmod 711 "$dir/munge" # the socket reachable by any job's user, the key not
    local host ports ctl_port node_port
    host=$(hostname -s)
    # Two free TCP ports, so that a Slurm already on this machine (or a leftover) is not hit.
    ports=$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
    read -r ctl_port node_port <<<"$ports"

    # munge: a fresh key, a socket in DIR (slurm.conf's AuthInfo points the daemons and the
    # clients at it).
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" ||
        { echo "munged did not start (log: $dir/log/munged.log)" >&2; return 1; }

    : >"$dir/plugstack.conf" # not the system's /etc/slurm/plugstack.conf
    cat >"$dir/slurm.conf" <<CONF
ClusterName=dexpression-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctl_port
SlurmdPort=$node_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# Finished jobs stay visible to scontrol for the test's checks.
MinJobAge=3600
KillWait=5
ReturnToService=2
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF" ||
        { echo "slurmctld did not start (log: $dir/log/slurmctld.log)" >&2; return 1; }
    slurmd -f "$SLURM_CONF" -N "$host" ||
        { echo "slurmd did not start (log: $dir/log/slurmd.log)" >&2; return 1; }

    local deadline=$((SECONDS + ${DEXPRESSION_CI_SLURM_START_S:-60}))
    until [[ $(sinfo -h -n "$host" -o %T 2>/dev/null) == idle ]]; do
        if ((SECONDS >= deadline)); then
            echo "the one-node Slurm did not become ready in ${DEXPRESSION_CI_SLURM_START_S:-60} s;" \
                "sinfo says: $(sinfo -h -n "$host" -o '%T %E' 2>&1)" >&2
            return 1
        fi
        sleep 0.5
    done
}

slurm_stop() {
    local dir=$1 name pid
    # scontrol shutdown stops slurmctld and slurmd; `|| true` everywhere: this runs from traps,
    # where errexit must not cut the cleanup short.
    if [[ -f $dir/slurm.conf ]]; then
        export SLURM_CONF=$dir/slurm.conf
        # Every job of this private cluster is the test's: cancel them, and give slurmd up to
        # 15 s to end their processes before it goes (its job steps outlive it otherwise).
        timeout 20 scancel --full --quiet --partition=ci >/dev/null 2>&1 || true
        for _ in $(seq 150); do
            [[ -z $(timeout 5 squeue -h -t RUNNING,COMPLETING -o %A 2>/dev/null) ]] && break
            sleep 0.1
        done
        timeout 20 scontrol shutdown >/dev/null 2>&1 || true
    fi
    # Whatever did not stop within 10 s, by the pid files of the daemons started here.
    for name in slurmd slurmctld munge/munged; do
        pid=$(cat "$dir/$name.pid" 2>/dev/null) || continue
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            [[ $name == munge/munged ]] && { munged --stop --socket="$dir/munge/munge.socket" >/dev/null 2>&1 || true; }
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "stopping $name ($pid) with SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    return 0
}
