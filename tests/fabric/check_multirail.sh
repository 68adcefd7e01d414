#!/bin/bash
# Multi-rail over real interfaces: two network namespaces joined by two veth pairs give the tcp
# provider two NICs per side. Runs test-multirail-peer (receiver in one namespace, sender in the
# other) with one rail, then two rails (MOEFABRIC_TCP_IFACE=<if0>+<if1>), checks the data, reads
# each interface's tx_bytes to see both rails carry a fair share, prints 1- vs 2-rail bandwidth,
# then takes rail 1 down mid-transfer and expects both sides to fail, naming the rail, within a
# bounded time. With the plugin .so given, also checks that its init hands NCCL the topology
# (NCCL_TOPO_FILE on a memfd) for the 2-rail device, and leaves a user's NCCL_TOPO_FILE alone.
# With moefabric-run and moefabric-moe-perf given, also runs an MoE dispatch/combine (host
# backend, checked against the reference) between the namespaces on 1 and then 2 rails: the
# proxy must stripe over both interfaces.
# Exit 77 (skipped) without root or `ip netns`.
# Usage: check_multirail.sh <test-multirail-peer> [libnccl-net-moefabric.so [moefabric-run moefabric-moe-perf]]
#        (MFRAIL_SIZE: message bytes, default 64 MiB; MFRAIL_ITERS: streamed messages, default 24)
set -u
PEER=${1:?usage: check_multirail.sh <test-multirail-peer> [libnccl-net-moefabric.so]}
PLUGIN=${2:-}
MOERUN=${3:-}
MOEPERF=${4:-}
SIZE=${MFRAIL_SIZE:-$((64 << 20))}
ITERS=${MFRAIL_ITERS:-24}

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces and veth pairs)"
command -v ip >/dev/null || skip "iproute2 'ip' not found"

ID=$(( $$ % 100000 ))
NSA=mfrail$ID-a NSB=mfrail$ID-b
IF0A=mf${ID}r0a IF0B=mf${ID}r0b IF1A=mf${ID}r1a IF1B=mf${ID}r1b
WORK=$(mktemp -d /tmp/mfrail.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  ip netns del "$NSA" 2>/dev/null
  ip netns del "$NSB" 2>/dev/null  # deleting a namespace deletes its veth ends
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

ip netns add "$NSA" 2>/dev/null || skip "cannot create network namespaces (ip netns add failed)"
ip netns add "$NSB" || fail "ip netns add $NSB"
A() { ip netns exec "$NSA" "$@"; }
B() { ip netns exec "$NSB" "$@"; }
for r in 0 1; do
  a=mf${ID}r${r}a b=mf${ID}r${r}b
  ip link add "$a" type veth peer name "$b" || skip "cannot create veth pairs"
  ip link set "$a" netns "$NSA" && ip link set "$b" netns "$NSB" || fail "moving $a/$b"
  A ip addr add "10.77.$r.1/24" dev "$a" && B ip addr add "10.77.$r.2/24" dev "$b" || fail "addresses"
  A ip link set "$a" up && B ip link set "$b" up || fail "link up"
done
A ip link set lo up; B ip link set lo up
echo "# namespaces $NSA / $NSB; rails: $IF0A<->$IF0B (10.77.0.0/24), $IF1A<->$IF1B (10.77.1.0/24)"

tx() { A cat "/sys/class/net/$1/statistics/tx_bytes"; }

# run <name> <ifaces A> <ifaces B> <iters> [env...]: receiver in B, sender in A; waits for both.
run() {
  local name=$1 ia=$2 ib=$3 iters=$4; shift 4
  local dir=$WORK/$name
  mkdir -p "$dir"
  B env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$ib" "$@" \
    timeout -k 5 180 "$PEER" --role recv --dir "$dir" --size "$SIZE" --iters "$iters" --timeout 150 \
    >"$dir/recv.out" 2>"$dir/recv.err" &
  local rpid=$!
  A env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$ia" "$@" \
    timeout -k 5 180 "$PEER" --role send --dir "$dir" --size "$SIZE" --iters "$iters" --timeout 150 \
    >"$dir/send.out" 2>"$dir/send.err" &
  local spid=$!
  PIDS=("$rpid" "$spid")
  wait "$spid"; SEND_RC=$?
  wait "$rpid"; RECV_RC=$?
  PIDS=()
  cat "$dir/send.out" "$dir/recv.out"
}

gbs() { sed -n 's/.*checked, \([0-9.]*\) GB\/s.*/\1/p' "$WORK/$1/recv.out"; }

# ---- one rail --------------------------------------------------------------------------------
t0a=$(tx "$IF0A") t1a=$(tx "$IF1A")
run one "$IF0A" "$IF0B" "$ITERS"
[ "$SEND_RC" = 0 ] && [ "$RECV_RC" = 0 ] || { cat "$WORK/one/"*.err; fail "1-rail run (sender $SEND_RC, receiver $RECV_RC)"; }
d0=$(( $(tx "$IF0A") - t0a )) d1=$(( $(tx "$IF1A") - t1a ))
echo "# 1 rail: tx bytes $IF0A $d0, $IF1A $d1"
BW1=$(gbs one)

# ---- two rails -------------------------------------------------------------------------------
t0a=$(tx "$IF0A") t1a=$(tx "$IF1A")
run two "$IF0A+$IF1A" "$IF0B+$IF1B" "$ITERS"
[ "$SEND_RC" = 0 ] && [ "$RECV_RC" = 0 ] || { cat "$WORK/two/"*.err; fail "2-rail run (sender $SEND_RC, receiver $RECV_RC)"; }
grep -q "2 rail(s)" "$WORK/two/send.out" || fail "sender did not open a 2-rail device"
d0=$(( $(tx "$IF0A") - t0a )) d1=$(( $(tx "$IF1A") - t1a ))
total=$(( d0 + d1 ))
expect=$(( SIZE * (ITERS + 2) ))
echo "# 2 rails: tx bytes $IF0A $d0, $IF1A $d1 (payload $expect)"
[ "$total" -ge "$expect" ] || fail "interfaces carried $total bytes, less than the $expect sent"
for d in $d0 $d1; do
  [ $(( d * 100 / total )) -ge 30 ] || fail "a rail carried less than 30% of the bytes ($d0 / $d1)"
done
BW2=$(gbs two)
# The NCCL topology a 2-rail device is described with (NCCL_TOPO_FILE through a memfd in NCCL).
A env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$IF0A+$IF1A" "$PEER" --role send --dir "$WORK" \
  --print-topo >"$WORK/topo.xml" || fail "--print-topo"
grep -q "<net name=\"$IF0A+$IF1A\" dev=\"0\" speed=\"20000\"" "$WORK/topo.xml" ||
  { cat "$WORK/topo.xml"; fail "topology XML does not show the 2-rail device with the summed speed"; }
sed -n '/<system/,/<\/system>/p' "$WORK/topo.xml"
if [ -n "$PLUGIN" ] && ldd "$PLUGIN" | grep -qE 'lib(a|t)san'; then
  # python is no sanitizer build: a sanitized .so cannot be dlopened into it.
  echo "# plugin init check skipped: $PLUGIN is a sanitizer build"
elif [ -n "$PLUGIN" ] && command -v python3 >/dev/null; then
  # NCCL's side: dlopen the plugin, init through its v10 table, read NCCL_TOPO_FILE back.
  cat >"$WORK/init.py" <<'PY'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
table = (ctypes.c_void_p * 3).in_dll(lib, "ncclNetPlugin_v10")
init = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(table[1])
if init(None, None) != 0:
    sys.exit("plugin init failed")
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
v = libc.getenv(b"NCCL_TOPO_FILE")
print("NCCL_TOPO_FILE=" + (v.decode() if v else "(unset)"))
if v and v.startswith(b"/proc/self/fd/"):
    print(open(v.decode()).read(), end="")
PY
  A env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$IF0A+$IF1A" python3 "$WORK/init.py" "$PLUGIN" \
    >"$WORK/init.out" 2>&1 || { cat "$WORK/init.out"; fail "plugin init"; }
  grep -q "^NCCL_TOPO_FILE=/proc/self/fd/" "$WORK/init.out" &&
    grep -q "<net name=\"$IF0A+$IF1A\" dev=\"0\" speed=\"20000\"" "$WORK/init.out" ||
    { cat "$WORK/init.out"; fail "plugin init did not hand NCCL the 2-rail topology"; }
  A env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$IF0A+$IF1A" NCCL_TOPO_FILE=/etc/mine.xml \
    python3 "$WORK/init.py" "$PLUGIN" 2>&1 | grep -q "^NCCL_TOPO_FILE=/etc/mine.xml$" ||
    fail "plugin init replaced the user's NCCL_TOPO_FILE"
  A env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$IF0A+$IF1A" MOEFABRIC_TOPO_FILE=0 \
    python3 "$WORK/init.py" "$PLUGIN" 2>&1 | grep -q "^NCCL_TOPO_FILE=(unset)$" ||
    fail "MOEFABRIC_TOPO_FILE=0 did not turn the topology file off"
  A env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$IF0A" python3 "$WORK/init.py" "$PLUGIN" 2>&1 |
    grep -q "^NCCL_TOPO_FILE=(unset)$" || fail "a topology file for a 1-rail device"
  echo "# plugin init: NCCL_TOPO_FILE on a memfd for the 2-rail device; user's value kept; off with MOEFABRIC_TOPO_FILE=0; none for 1 rail"
fi
echo "multirail bandwidth over veth+tcp, $SIZE-byte messages: 1 rail $BW1 GB/s, 2 rails $BW2 GB/s"

# ---- the MoE proxy over the rails ------------------------------------------------------------
# Rank 0 in namespace A, rank 1 in B; moefabric-run's out-of-band channel is a socket pair, which
# crosses namespaces. 512 tokens of hidden 7168 (bf16) put ~3.6 MiB per dispatch write, striped.
moe() {  # <name> <ifaces A> <ifaces B>
  local dir=$WORK/moe-$1
  mkdir -p "$dir"
  timeout -k 5 200 "$MOERUN" -n 2 -T 180 -- sh -c '
    if [ "$MOEFABRIC_RANK" = 0 ]; then ns=$1 ifs=$2; else ns=$3 ifs=$4; fi
    exec ip netns exec "$ns" env MOEFABRIC_PROVIDER=tcp MOEFABRIC_TCP_IFACE="$ifs" MOEFABRIC_DEBUG=INFO \
      MOEFABRIC_DEBUG_SUBSYS=INIT "$5" -c 1 --tokens 512 --hidden 7168 -E 16 -k 4 -d bf16 -n 12 -w 2 \
      2>"$6/rank$MOEFABRIC_RANK.err"' sh "$NSA" "$2" "$NSB" "$3" "$MOEPERF" "$dir" >"$dir/out" 2>"$dir/run.err"
  MOE_RC=$?
  MOE_ROW=$(grep -v '^#' "$dir/out" | tail -n 1)
  echo "$MOE_ROW"
}
if [ -n "$MOERUN" ] && [ -n "$MOEPERF" ]; then
  moe one "$IF0A" "$IF0B"
  [ "$MOE_RC" = 0 ] || { cat "$WORK/moe-one/"*.err; fail "MoE run on 1 rail (rc $MOE_RC)"; }
  MOE1=$(echo "$MOE_ROW" | awk '{print $11}')
  t0a=$(tx "$IF0A") t1a=$(tx "$IF1A")
  moe two "$IF0A+$IF1A" "$IF0B+$IF1B"
  [ "$MOE_RC" = 0 ] || { cat "$WORK/moe-two/"*.err; fail "MoE run on 2 rails (rc $MOE_RC)"; }
  [ "$(echo "$MOE_ROW" | awk '{print $NF}')" = 0 ] || fail "MoE results differ from the reference"
  grep -q "2 rail(s)" "$WORK/moe-two/rank0.err" ||
    { cat "$WORK/moe-two/rank0.err"; fail "the MoE comm did not open both rails"; }
  d0=$(( $(tx "$IF0A") - t0a )) d1=$(( $(tx "$IF1A") - t1a ))
  total=$(( d0 + d1 ))
  echo "# MoE, 2 rails: tx bytes $IF0A $d0, $IF1A $d1"
  for d in $d0 $d1; do
    [ $(( d * 100 / total )) -ge 30 ] || fail "an MoE rail carried less than 30% of the bytes ($d0 / $d1)"
  done
  MOE2=$(echo "$MOE_ROW" | awk '{print $11}')
  echo "MoE dispatch+combine over veth+tcp (512 tokens, hidden 7168, bf16, top-4 of 16, p50): 1 rail $MOE1 us, 2 rails $MOE2 us"
fi

# ---- rail 1 goes down mid-transfer -----------------------------------------------------------
dir=$WORK/down
mkdir -p "$dir"
ENV=(MOEFABRIC_PROVIDER=tcp MOEFABRIC_PEER_TIMEOUT_MS=3000 MOEFABRIC_KEEPALIVE_MS=500)
B env "${ENV[@]}" MOEFABRIC_TCP_IFACE="$IF0B+$IF1B" timeout -k 5 90 "$PEER" --role recv --dir "$dir" \
  --size "$SIZE" --iters 1000000 --timeout 80 >"$dir/recv.out" 2>"$dir/recv.err" &
rpid=$!
A env "${ENV[@]}" MOEFABRIC_TCP_IFACE="$IF0A+$IF1A" timeout -k 5 90 "$PEER" --role send --dir "$dir" \
  --size "$SIZE" --iters 1000000 --timeout 80 >"$dir/send.out" 2>"$dir/send.err" &
spid=$!
PIDS=("$rpid" "$spid")
start=$(tx "$IF1A")
for _ in $(seq 100); do  # wait until rail 1 is moving data
  [ $(( $(tx "$IF1A") - start )) -gt $(( SIZE * 2 )) ] && break
  sleep 0.1
done
down_at=$(date +%s.%N)
A ip link set "$IF1A" down
echo "# $IF1A down"
wait "$spid"; SEND_RC=$?
send_s=$(echo "$(date +%s.%N) - $down_at" | bc)
wait "$rpid"; RECV_RC=$?
recv_s=$(echo "$(date +%s.%N) - $down_at" | bc)
PIDS=()
echo "--- sender stderr"; tail -n 5 "$dir/send.err"
echo "--- receiver stderr"; tail -n 5 "$dir/recv.err"
echo "# rail down: sender exit $SEND_RC after ${send_s}s, receiver exit $RECV_RC after ${recv_s}s"
[ "$SEND_RC" != 0 ] && [ "$RECV_RC" != 0 ] || fail "a side did not fail after its rail went down"
[ "$SEND_RC" != 124 ] && [ "$SEND_RC" != 137 ] && [ "$RECV_RC" != 124 ] && [ "$RECV_RC" != 137 ] ||
  fail "a side hung until killed by timeout"
grep -q "rail 1 ($IF1A)" "$dir/send.err" || fail "sender's error does not name rail 1 ($IF1A)"
# The receiver learns the rail from the sender's error message when it gets through; if the
# sender's process is gone first it fails on the peer timeout instead ("peer silent").
grep -q "rail 1" "$dir/recv.err" || grep -q "peer silent" "$dir/recv.err" ||
  fail "receiver's error names neither rail 1 nor the silent peer"
echo "PASS"
