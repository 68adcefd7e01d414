#!/bin/sh
# moefabric-topo on the live machine: a table with this machine's NICs, and either its GPUs or
# an explicit "no GPU found" where there is no NVIDIA device.
set -eu
tool="$1"
out=$("$tool") || { echo "moefabric-topo failed"; exit 1; }
echo "$out"
echo "$out" | grep -q '^# moefabric-topo: live machine' || { echo "no header line"; exit 1; }
echo "$out" | grep -q '^NIC0 ' || { echo "no NIC listed"; exit 1; }
if ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
  echo "$out" | grep -q '^GPU0 ' || { echo "GPU present but not listed"; exit 1; }
else
  echo "$out" | grep -q '^# no GPU found' || { echo "no GPU here, and the table does not say so"; exit 1; }
fi
"$tool" --json | grep -q '"gpus": \[' || { echo "--json output lacks gpus"; exit 1; }
