#!/usr/bin/env bash
# Real SLURM test: a one-node SLURM (Debian's slurm-wlm + munge) on localhost, then the tiny study
# (.test/config.yaml) through `--profile profiles/slurm`. Checks that every job went through sbatch
# and that the outputs are complete; stops the daemons it started (by PID) on exit.
#
#   bash tests/slurm/run.sh            (as root, from the repository root, with the venv active)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/sslad-slurm.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ -e "$work/slurm.conf.orig" ]; then cp -p "$work/slurm.conf.orig" /etc/slurm/slurm.conf
  elif [ -e "$work/slurm.conf" ]; then rm -f /etc/slurm/slurm.conf; fi
}
trap cleanup EXIT

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# munge: a key, its runtime dir, the daemon as the munge user
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # start munged unless one already answers
  runuser -u munge -- munged
  sleep 1
  pids+=("$(cat /run/munge/munged.pid)")
fi
munge -n | unmunge >/dev/null

# slurm: one node on localhost, no accounting (the plugin then reads job states with squeue)
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p "$work/state" "$work/spool"
cat > "$work/slurm.conf" <<CONF
ClusterName=sslad-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
SlurmctldDebug=debug
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
# Job steps (srun inside each job) read the default path, so the config goes there for the test;
# a config that was there is put back on exit.
mkdir -p /etc/slurm
if [ -e /etc/slurm/slurm.conf ]; then cp -p /etc/slurm/slurm.conf "$work/slurm.conf.orig"; fi
cp "$work/slurm.conf" /etc/slurm/slurm.conf
export SLURM_CONF=/etc/slurm/slurm.conf
slurmctld
slurmd
sleep 2
pids+=("$(cat "$work/slurmctld.pid")" "$(cat "$work/slurmd.pid")")
for _ in $(seq 30); do sinfo -h -o %T | grep -q idle && break; sleep 1; done
sinfo

# the tiny study (fewer subjects still: SSLAD_SLURM_SUBJECTS, default 6), submitted job by job
for item in Snakefile config.yaml workflow envs profiles .test; do cp -r "$repo/$item" "$work/"; done
cd "$work"
snakemake --profile profiles/slurm --configfile .test/config.yaml \
  --config simulate="{n_subjects: ${SSLAD_SLURM_SUBJECTS:-6}}" --jobs 4 --group-components preprocess=2 \
  --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2 \
  --default-resources mem_mb=1000 runtime=30 2>&1 | tee "$work/snakemake.log"

echo; echo "jobs SLURM ran (squeue keeps finished jobs for MinJobAge):"
squeue --states=all -h -o "%.6i %.30k %.10T %.8M" | tee "$work/squeue.txt"
grep -q "(100%) done" "$work/snakemake.log" || { echo "FAIL: the study did not finish"; exit 1; }
if grep -E "^localrule " "$work/snakemake.log" | grep -v "^localrule all:"; then
  echo "FAIL: a job ran outside SLURM"; exit 1
fi
ids=$(grep -oE "submitted with SLURM jobid [0-9]+" "$work/snakemake.log" | awk '{print $NF}' | sort -u)
[ -n "$ids" ] || { echo "FAIL: nothing was submitted"; exit 1; }
for id in $ids; do
  grep -qE "JobId=$id (done|WEXITSTATUS 0)" "$work/slurmctld.log" \
    || { echo "FAIL: SLURM job $id did not complete cleanly"; exit 1; }
done
test -s results/manifest/visits.tsv && test -s results/preproc/qc.tsv
for t in dx_cn_ad det_mci_ad fut_mci_ad; do test -s "results/manifest/tasks/$t.tsv"; done
scans=$(( $(wc -l < results/cohort/scans.tsv) - 1 ))
qcs=$(find results/preproc -name '*_qc.json' | wc -l)
[ "$scans" -eq "$qcs" ] || { echo "FAIL: $scans scans but $qcs QC records"; exit 1; }
echo "SLURM test passed: $(echo "$ids" | wc -w) sbatch submissions (preprocessing grouped), $scans scans, all outputs present"
