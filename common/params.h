// Every environment variable moefabric reads, declared once: name, type, default, one-line doc.
// Values are read once into a Params object owned by whoever initialises the library (the plugin
// context, the MoE comm, a tool); there is no process-global configuration state.
#pragma once

#include <cstdint>
#include <string>

namespace moefabric {

// X(field, ENV_NAME, type, default, doc)   type: Int (int64) | Str | Bool
#define MOEFABRIC_PARAM_TABLE(X)                                                                       \
  X(provider, "MOEFABRIC_PROVIDER", Str, "",                                                           \
    "libfabric provider (efa, verbs, tcp, shm, ...); empty: FI_PROVIDER, else efa, verbs, tcp")        \
  X(tcp_iface, "MOEFABRIC_TCP_IFACE", Str, "",                                                         \
    "interfaces the tcp provider may use, ',' between devices, '+' joins rails of one device "         \
    "(eth1+eth2,eth3); empty: all but lo/docker*, else lo")                                            \
  X(rails, "MOEFABRIC_RAILS", Str, "",                                                                 \
    "NICs (libfabric domain names) per device, ',' between devices, '+' between rails "                \
    "(mlx5_0+mlx5_1,mlx5_2); empty: the rails of each GPU per the topology, else one NIC each; "       \
    "an MoE proxy uses its GPU's device, else the first")                                              \
  X(stripe_min, "MOEFABRIC_STRIPE_MIN", Int, "262144",                                                 \
    "messages (plugin) and writes (MoE proxies) this large or larger are striped over a "              \
    "multi-rail device's rails (128-byte aligned stripes); smaller ones go whole on one rail, "        \
    "round robin, bytes")                                                                              \
  X(topo_file, "MOEFABRIC_TOPO_FILE", Bool, "1",                                                       \
    "when NICs are grouped into multi-rail devices, hand NCCL a matching topology XML "                \
    "(NCCL_TOPO_FILE=/proc/self/fd/N on a memfd) unless NCCL_TOPO_FILE is set")                        \
  X(protocol, "MOEFABRIC_PROTOCOL", Str, "auto",                                                       \
    "data path: rdma (fi_writedata into receiver-posted buffers), tagged, or auto")                    \
  X(eager_max, "MOEFABRIC_EAGER_MAX", Int, "8192",                                                     \
    "largest message sent eagerly (before the receiver's control entry arrives), bytes")               \
  X(eager_known, "MOEFABRIC_EAGER_KNOWN", Int, "-1",                                                   \
    "messages up to this size go eagerly even when the receiver's control entry is known (one "        \
    "message instead of a write); -1: MOEFABRIC_EAGER_MAX where a write with immediate takes "         \
    "two operations (tcp), else 0, bytes")                                                             \
  X(rx_buffers, "MOEFABRIC_RX_BUFFERS", Int, "256",                                                    \
    "receive buffers posted per endpoint for control and eager messages")                              \
  X(tx_buffers, "MOEFABRIC_TX_BUFFERS", Int, "1024",                                                   \
    "registered bounce buffers per endpoint for outgoing control and eager messages")                  \
  X(max_write, "MOEFABRIC_MAX_WRITE", Int, "1073741824",                                               \
    "largest single RDMA write; bigger messages are split into segments (at most 16)")                 \
  X(split_imm, "MOEFABRIC_SPLIT_IMM", Str, "auto",                                                     \
    "send each write's immediate in its own zero-byte write: auto (tcp;ofi_rxm), 0, 1")                \
  X(cq_read_count, "MOEFABRIC_CQ_READ_COUNT", Int, "32", "completions read per fi_cq_read call")       \
  X(mr_cache, "MOEFABRIC_MR_CACHE", Bool, "1",                                                         \
    "cache memory registrations (refcounted; each covers exactly the caller's bytes)")                 \
  X(gdr, "MOEFABRIC_GDR", Str, "auto",                                                                 \
    "advertise CUDA pointers to NCCL: auto (when the provider has FI_HMEM and CUDA loads), 0, 1")      \
  X(keepalive_ms, "MOEFABRIC_KEEPALIVE_MS", Int, "1000",                                               \
    "idle time after which a peer with pending requests is pinged, ms")                                \
  X(peer_timeout_ms, "MOEFABRIC_PEER_TIMEOUT_MS", Int, "30000",                                        \
    "a peer silent this long while requests are pending is declared lost, ms")                         \
  X(connect_timeout_ms, "MOEFABRIC_CONNECT_TIMEOUT_MS", Int, "120000",                                 \
    "connect/accept handshake timeout, ms")                                                            \
  X(latency_us, "MOEFABRIC_LATENCY_US", Int, "0",                                                      \
    "latency reported to NCCL's tuner, us; 0: provider default (efa 35, others 10)")                   \
  X(timeout_ms, "MOEFABRIC_TIMEOUT_MS", Int, "60000",                                                  \
    "default ncclMoe timeoutMs: bound on every dispatch/combine/destroy wait, ms")                     \
  X(proxy_cpu, "MOEFABRIC_PROXY_CPU", Int, "-1",                                                       \
    "pin the MoE proxy thread to this CPU; -1: its GPU's NUMA slice (CUDA backend), else its "         \
    "first rail's NUMA node (topology)")                                                               \
  X(proxy_spin_us, "MOEFABRIC_PROXY_SPIN_US", Int, "200",                                              \
    "MoE proxy busy-polls this long after the last event, then blocks in the CQ until woken")          \
  X(force_fabric, "MOEFABRIC_FORCE_FABRIC", Bool, "0",                                                 \
    "CUDA MoE backend: reach every peer, self included, through the host proxy and libfabric")         \
  X(node_size, "MOEFABRIC_NODE_SIZE", Int, "0",                                                        \
    "CUDA MoE backend: consecutive ranks form nodes of N (NVLink inside, fabric between); 0: by host") \
  X(moe_staging, "MOEFABRIC_MOE_STAGING", Str, "auto",                                                 \
    "CUDA MoE backend, fabric peers: where packed tokens wait for the proxy's writes: device "         \
    "(GPU memory registered with FI_HMEM; the provider reads and writes it), host (pinned host "       \
    "memory the kernels store into over PCIe), auto (device where MOEFABRIC_GDR gets FI_HMEM "         \
    "and the NIC writes GPU memory itself, else host)")                                                \
  X(topo_xml, "MOEFABRIC_TOPO_XML", Str, "",                                                           \
    "read the machine topology from this hwloc XML instead of the live machine")                       \
  X(test_seq_start, "MOEFABRIC_TEST_SEQ_START", Int, "0",                                              \
    "for tests only: first message and receive-group number of every net plugin connection "           \
    "(both ends must set the same value; near 4294967296 it exercises the 32-bit wrap)")               \
  X(debug, "MOEFABRIC_DEBUG", Str, "WARN",                                                             \
    "log level outside NCCL: NONE, WARN, INFO, TRACE (inside NCCL use NCCL_DEBUG)")

struct ParamDesc {
  const char* env;
  const char* type;
  const char* default_value;
  const char* doc;
};

struct Params {
#define MF_PARAM_FIELD_Int(name) int64_t name = 0;
#define MF_PARAM_FIELD_Str(name) std::string name;
#define MF_PARAM_FIELD_Bool(name) bool name = false;
#define MF_PARAM_FIELD(name, env, type, def, doc) MF_PARAM_FIELD_##type(name)
  MOEFABRIC_PARAM_TABLE(MF_PARAM_FIELD)
#undef MF_PARAM_FIELD

  // Reads the environment (defaults for unset variables). Malformed values are reported with a
  // warning naming the variable and replaced by the default.
  static Params load();
  // Logs every value at INFO (NCCL_DEBUG=INFO or MOEFABRIC_DEBUG=INFO shows them).
  void dump() const;
};

// The declaration table, for documentation checks and --help output.
const ParamDesc* param_table(int* count);

}  // namespace moefabric
