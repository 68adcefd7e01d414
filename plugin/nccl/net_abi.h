// moefabric's own declaration of NCCL's external net-plugin ABI (NCCL 2.28.9: ncclNet v8..v11;
// NCCL 2.30: ncclNet v12).
//
// Written from the documented layout (docs: shared/reference/nccl-net-plugin.md section 1) and
// checked against NCCL's headers at tag v2.28.9-1 (v8..v11) and v2.30.7-1 (v12, read from NCCL's
// public repository: no NCCL 2.30 is installed here); no NCCL header is included or copied. NCCL
// dlopens the plugin and reads the exported structs byte for byte, so every type, field order
// and argument type here is part of the contract. tests/unit/test_net_abi.cpp pins sizes and
// offsets for x86-64 LP64; change this file only together with those numbers.
//
// Member names keep NCCL's camelCase so adapters read like NCCL's documentation. Where NCCL
// uses a C enum (ncclResult_t, ncclDebugLogLevel, ncclNetDeviceType) this header uses int or an
// int-based enum: C enums are int-sized on every ABI NCCL supports, so layout and calling
// convention are identical.
#pragma once

#include <cstddef>
#include <cstdint>

namespace moefabric::nccl::abi {

// ---------------------------------------------------------------------------------------------
// Return codes (ncclResult_t). NCCL also has ncclInProgress = 7, which is internal to NCCL:
// a plugin must never return it, so it is deliberately absent.
enum result_t : int {
  kSuccess = 0,
  kUnhandledCudaError = 1,  // a CUDA call failed
  kSystemError = 2,         // OS / library / network / hardware failure (the usual one)
  kInternalError = 3,       // NCCL misused the plugin (e.g. too many requests, size too big)
  kInvalidArgument = 4,     // bad argument (should not be needed by a plugin)
  kInvalidUsage = 5,        // user error or misconfiguration (e.g. send larger than receive)
  kRemoteError = 6,         // peer or network gone
};

// ---------------------------------------------------------------------------------------------
// Constants (nccl_net.h, net_device.h, net_v11.h, net_v12.h).
inline constexpr std::size_t kHandleMaxSize = 128;  // bytes of the listen handle NCCL exchanges
inline constexpr int kMaxRequests = 32;             // outstanding requests per comm
inline constexpr int kPtrHost = 0x1;                // ptrSupport / regMr type: host memory
inline constexpr int kPtrCuda = 0x2;                // ptrSupport / regMr type: CUDA memory (GDR)
inline constexpr int kPtrDmabuf = 0x4;              // ptrSupport: regMrDmaBuf usable
// Value NCCL may preset in *request before irecv (cast to void*): completion may be reported
// early (LL/LL128). NCCL's v8-and-older shim clears it, so only v9+ tables ever see it.
inline constexpr std::uintptr_t kOptionalRecvCompletion = 0x1;
inline constexpr std::uintptr_t kMultiRequest = 0x2;  // defined, unused by the 2.28 core
// 1 TiB: largest maxP2pBytes / maxCollBytes NCCL accepts.
inline constexpr std::size_t kMaxNetSizeBytes = std::size_t{1} << 40;
// 1 GiB: the transfer cap NCCL assumes (and enforces) for v8 plugins, whose sizes are int.
inline constexpr std::size_t kMaxNetSizeV8 = std::size_t{1} << 30;
inline constexpr int kMaxDevsPerNic = 4;           // physical devices per fused vNIC, v9..v11
inline constexpr int kMaxDevsPerNicV12 = 8;        // the same for v12 (NCCL 2.30)
inline constexpr int kTrafficClassUndef = -1;      // comm_config_v11_t::trafficClass "not set"
inline constexpr std::int32_t kNetAttrUndef = -1;  // net_attr_v11_t fields "not set" (op/algo/
                                                   // proto hold it as 0xffffffff)
inline constexpr int kNetIdUndef = -1;             // properties_v12_t railId / planeId "not known"

// netDeviceType values (ncclNetDeviceType). A host plugin reports kNetDeviceHost.
inline constexpr int kNetDeviceHost = 0;
inline constexpr int kNetDeviceUnpack = 1;    // GPU-side unpack; needs kNetDeviceUnpackVersion
inline constexpr int kNetDeviceGinProxy = 2;  // GIN plugin properties only
inline constexpr int kNetDeviceGinGdaki = 3;  // GIN plugin properties only
inline constexpr int kNetDeviceGinGpi = 4;    // GIN plugin properties only (NCCL 2.30)
inline constexpr int kNetDeviceUnpackVersion = 0x7;

// Logger levels (ncclDebugLogLevel).
inline constexpr int kLogNone = 0;
inline constexpr int kLogVersion = 1;
inline constexpr int kLogWarn = 2;
inline constexpr int kLogInfo = 3;
inline constexpr int kLogAbort = 4;
inline constexpr int kLogTrace = 5;

// Logger subsystem flags (ncclDebugLogSubSys), OR-able; the logger's `flags` argument.
inline constexpr unsigned long kLogInit = 0x1;
inline constexpr unsigned long kLogColl = 0x2;
inline constexpr unsigned long kLogP2p = 0x4;
inline constexpr unsigned long kLogShm = 0x8;
inline constexpr unsigned long kLogNet = 0x10;
inline constexpr unsigned long kLogGraph = 0x20;
inline constexpr unsigned long kLogTune = 0x40;
inline constexpr unsigned long kLogEnv = 0x80;
inline constexpr unsigned long kLogAlloc = 0x100;
inline constexpr unsigned long kLogCall = 0x200;
inline constexpr unsigned long kLogProxy = 0x400;
inline constexpr unsigned long kLogNvls = 0x800;
inline constexpr unsigned long kLogBootstrap = 0x1000;
inline constexpr unsigned long kLogReg = 0x2000;
inline constexpr unsigned long kLogProfile = 0x4000;
inline constexpr unsigned long kLogRas = 0x8000;
inline constexpr unsigned long kLogAll = ~0UL;  // NCCL's enum value is ~0 (all bits)

// Profiler callback event types (the `type` argument of profiler_callback_t).
inline constexpr int kProfilerNetEventStart = 0;          // open an event; *eHandle receives it
inline constexpr int kProfilerNetEventStop = 1;           // close *eHandle
inline constexpr int kProfilerNetEventUpdate = 2;         // record extData on *eHandle
inline constexpr int kProfilerNetEventUpdateAndStop = 3;  // update, then close

// ---------------------------------------------------------------------------------------------
// Callbacks NCCL hands to init().

// ncclDebugLogger_t. NCCL declares `level` as the ncclDebugLogLevel enum (int-sized, same
// register); flags = kLog* subsystem bits; printf-style fmt.
using logger_t = void (*)(int level, unsigned long flags, const char* file, int line, const char* fmt, ...);

// ncclProfilerCallback_t (v10..v12). eHandle: in/out event handle; type: kProfilerNetEvent*;
// pHandle: the per-operation profiler handle NCCL passed to isend/irecv (opaque); pluginId:
// plugin-defined event id/version; extData: plugin-defined payload for the profiler plugin.
using profiler_callback_t = result_t (*)(void** eHandle, int type, void* pHandle, std::int64_t pluginId,
                                         void* extData);

// ---------------------------------------------------------------------------------------------
// Data structures.

// ncclNetVDeviceProps_v9/v10/v11_t (identical in all three): children of a fused virtual NIC.
struct vdevice_props_t {
  int ndevs;                 // number of valid entries in devs
  int devs[kMaxDevsPerNic];  // physical device indices
};

// ncclNetVDeviceProps_v12_t: vdevice_props_t with room for kMaxDevsPerNicV12 children.
struct vdevice_props_v12_t {
  int ndevs;                    // number of valid entries in devs
  int devs[kMaxDevsPerNicV12];  // physical device indices
};

// ncclNetCommConfig_v10/v11/v12_t (identical): per-communicator network configuration.
struct comm_config_v11_t {
  int trafficClass;  // QoS / traffic class value, plugin-interpreted; kTrafficClassUndef = unset
};
using comm_config_v10_t = comm_config_v11_t;
using comm_config_v12_t = comm_config_v11_t;

// ncclNetProperties_v12_t: v11 with the wider vProps (every later field moves by 16 bytes) and
// the NIC's rail and plane at the end.
struct properties_v12_t {
  char* name;                  // device name; unique per device
  char* pciPath;               // /sys path of the PCI function
  std::uint64_t guid;          // NIC chip id
  int ptrSupport;              // kPtrHost | kPtrCuda | kPtrDmabuf
  int regIsGlobal;             // 1 = MRs not tied to a comm
  int forceFlush;              // 1 = always iflush GDR receives
  int speed;                   // port speed, Mbps
  int port;                    // port number
  float latency;               // network latency, microseconds
  int maxComms;                // max comms per device
  int maxRecvs;                // max n of a grouped irecv
  int netDeviceType;           // ncclNetDeviceType enum
  int netDeviceVersion;        // device offload version
  vdevice_props_v12_t vProps;  // fused vNIC children (up to 8)
  std::size_t maxP2pBytes;     // largest single p2p transfer, bytes
  std::size_t maxCollBytes;    // largest single collective transfer, bytes
  int maxMultiRequestSize;     // max requests in one multi-request
  // Rail of the NIC: NCCL treats NICs of equal railId as one rail (a ring may enter on one and
  // leave on the other without crossNic, also across hosts); kNetIdUndef = unknown.
  std::int16_t railId;
  // Network plane: NCCL never connects NICs of two different defined planes; kNetIdUndef =
  // unknown.
  std::int16_t planeId;
};

// ncclNetProperties_v11_t: filled by getProperties().
struct properties_v11_t {
  char* name;                // device name; unique per device (also NCCL's topology XML key)
  char* pciPath;             // /sys path of the PCI function; NULL => attached to first CPU
  std::uint64_t guid;        // NIC chip id; same guid = same physical port
  int ptrSupport;            // kPtrHost | kPtrCuda | kPtrDmabuf
  int regIsGlobal;           // 1 = MRs not tied to a comm, re-registration of sub-ranges cheap
  int forceFlush;            // 1 = always iflush GDR receives
  int speed;                 // port speed, Mbps
  int port;                  // port number
  float latency;             // network latency, microseconds (added to NCCL's model)
  int maxComms;              // max comms per device (NCCL's per-NIC channel cap)
  int maxRecvs;              // max n of a grouped irecv
  int netDeviceType;         // ncclNetDeviceType enum: kNetDeviceHost for a host plugin
  int netDeviceVersion;      // device offload version (kNetDeviceUnpackVersion for UNPACK)
  vdevice_props_t vProps;    // fused vNIC children (ndevs = 1, devs[0] = self if physical)
  std::size_t maxP2pBytes;   // largest single p2p transfer, bytes (<= kMaxNetSizeBytes)
  std::size_t maxCollBytes;  // largest single collective transfer, bytes (<= kMaxNetSizeBytes)
  int maxMultiRequestSize;   // max requests in one multi-request; set 1
};

// ncclNetProperties_v10_t, also ncclNetProperties_v9_t (field-for-field identical): v11 without
// maxMultiRequestSize.
struct properties_v10_t {
  char* name;                // device name; unique per device
  char* pciPath;             // /sys path of the PCI function
  std::uint64_t guid;        // NIC chip id
  int ptrSupport;            // kPtrHost | kPtrCuda | kPtrDmabuf
  int regIsGlobal;           // 1 = MRs not tied to a comm
  int forceFlush;            // 1 = always iflush GDR receives
  int speed;                 // port speed, Mbps
  int port;                  // port number
  float latency;             // network latency, microseconds
  int maxComms;              // max comms per device
  int maxRecvs;              // max n of a grouped irecv
  int netDeviceType;         // ncclNetDeviceType enum
  int netDeviceVersion;      // device offload version
  vdevice_props_t vProps;    // fused vNIC children
  std::size_t maxP2pBytes;   // largest single p2p transfer, bytes
  std::size_t maxCollBytes;  // largest single collective transfer, bytes
};
using properties_v9_t = properties_v10_t;

// ncclNetProperties_v8_t: no forceFlush, vProps, maxP2pBytes, maxCollBytes (NCCL assumes
// forceFlush 0 and kMaxNetSizeV8).
struct properties_v8_t {
  char* name;            // device name; unique per device
  char* pciPath;         // /sys path of the PCI function
  std::uint64_t guid;    // NIC chip id
  int ptrSupport;        // kPtrHost | kPtrCuda | kPtrDmabuf
  int regIsGlobal;       // 1 = MRs not tied to a comm
  int speed;             // port speed, Mbps
  int port;              // port number
  float latency;         // network latency, microseconds
  int maxComms;          // max comms per device
  int maxRecvs;          // max n of a grouped irecv
  int netDeviceType;     // ncclNetDeviceType enum
  int netDeviceVersion;  // device offload version
};

// ncclNetCommAttr_v11_t: one direction of a setNetAttr hint. Peers = concurrent remote peers,
// flows = channels per peer; kNetAttrUndef when NCCL has no value.
struct net_comm_attr_v11_t {
  std::int32_t maxConcurrentPeers;  // upper bound on peers talked to at once
  std::int32_t minConcurrentPeers;  // lower bound on peers talked to at once
  std::int32_t maxFlowsPerPeer;     // upper bound on flows (channels) per peer
  std::int32_t minFlowsPerPeer;     // lower bound on flows (channels) per peer
};

// ncclNetAttr_v11_t: hints passed to setNetAttr().
struct net_attr_v11_t {
  net_comm_attr_v11_t sendCommAttr;  // hints for send comms
  net_comm_attr_v11_t recvCommAttr;  // hints for recv comms
  std::uint32_t op;     // bitmask of 1 << ncclFunc_t (collectives, send, recv...); all-ones = unset
  std::uint32_t algo;   // bitmask of 1 << NCCL algorithm; all-ones = unset (always for p2p)
  std::uint32_t proto;  // bitmask of 1 << NCCL protocol; all-ones = unset (always for p2p)
};
// ncclNetCommAttr_v12_t, ncclNetAttr_v12_t: unchanged from v11.
using net_comm_attr_v12_t = net_comm_attr_v11_t;
using net_attr_v12_t = net_attr_v11_t;

// ncclNetDeviceHandle_v7.._v12_t (one layout for all): device-offload handle returned through
// connect()/accept()'s sendDevComm/recvDevComm. Host plugins never fill it.
struct device_handle_t {
  int netDeviceType;       // ncclNetDeviceType enum
  int netDeviceVersion;    // device offload version
  void* handle;            // plugin device-side object
  std::size_t size;        // bytes at handle
  int needsProxyProgress;  // 1 = NCCL's proxy thread must keep calling the plugin
};

// ---------------------------------------------------------------------------------------------
// Function tables, exported as ncclNetPlugin_v12 / _v11 / _v10 / _v9 / _v8. Every callable
// returns result_t. Non-blocking contracts: connect/accept return kSuccess with a NULL comm until
// ready; isend/irecv return kSuccess with *request == NULL for "retry later".

// ncclNet_v11_t (NCCL 2.28-2.29): per-communicator init/finalize with a context.
struct net_v11_t {
  // Plugin name, for logs and NCCL_NET matching.
  const char* name;
  // Per communicator: *ctx = plugin context; commId = communicator hash; config = per-comm
  // settings; logFunction/profFunction = NCCL callbacks (profFunction may be unused).
  result_t (*init)(void** ctx, std::uint64_t commId, comm_config_v11_t* config, logger_t logFunction,
                   profiler_callback_t profFunction);
  // *ndev = number of devices (0 = plugin unusable).
  result_t (*devices)(int* ndev);
  // Fill *props for device dev.
  result_t (*getProperties)(int dev, properties_v11_t* props);
  // Create a listen comm on dev; write up to kHandleMaxSize bytes of connect info to handle.
  result_t (*listen)(void* ctx, int dev, void* handle, void** listenComm);
  // Non-blocking connect to a peer's handle (same buffer on every retry); sendDevComm != NULL
  // means NCCL asks for device offload.
  result_t (*connect)(void* ctx, int dev, void* handle, void** sendComm, device_handle_t** sendDevComm);
  // Non-blocking accept of an incoming connection on listenComm.
  result_t (*accept)(void* listenComm, void** recvComm, device_handle_t** recvDevComm);
  // Register [data, data+size) of type kPtrHost/kPtrCuda on a send or recv comm.
  result_t (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  // Register a DMA-BUF range (offset into fd); NCCL closes fd right after return. May be NULL.
  result_t (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type, std::uint64_t offset, int fd,
                          void** mhandle);
  // Release a handle from regMr/regMrDmaBuf.
  result_t (*deregMr)(void* comm, void* mhandle);
  // Post a send of size bytes; tag = sender rank; pHandle = profiler handle for this op.
  result_t (*isend)(void* sendComm, void* data, std::size_t size, int tag, void* mhandle, void* pHandle,
                    void** request);
  // Post an n-way grouped receive (one request); sizes = buffer capacities in bytes.
  result_t (*irecv)(void* recvComm, int n, void** data, std::size_t* sizes, int* tags, void** mhandles,
                    void** pHandles, void** request);
  // Make completed GPU receives visible to the GPU; *request == NULL = nothing to wait for.
  result_t (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles, void** request);
  // Poll request; *done = 1 when complete, sizes (may be NULL) = bytes per buffer.
  result_t (*test)(void* request, int* done, int* sizes);
  // Free a send comm (requests may still be in flight).
  result_t (*closeSend)(void* sendComm);
  // Free a recv comm (requests may still be in flight).
  result_t (*closeRecv)(void* recvComm);
  // Free a listen comm.
  result_t (*closeListen)(void* listenComm);
  // Device-offload only (NULL for host plugins): device-usable copy of mhandle.
  result_t (*getDeviceMr)(void* comm, void* mhandle, void** dptr_mhandle);
  // Device-offload only (NULL for host plugins): device consumed a completed receive.
  result_t (*irecvConsumed)(void* recvComm, int n, void* request);
  // Fuse props->devs into a virtual NIC; *d = its index. May be NULL.
  result_t (*makeVDevice)(int* d, vdevice_props_t* props);
  // Per-communicator teardown of ctx (the library may be dlclosed after the last one).
  result_t (*finalize)(void* ctx);
  // Traffic-shape hints for ctx. May be NULL.
  result_t (*setNetAttr)(void* ctx, net_attr_v11_t* netAttr);
};

// ncclNet_v12_t (NCCL 2.30+): v11's members in v11's order; only the properties and vNIC
// structs they point to changed. Members without a comment behave as in net_v11_t.
struct net_v12_t {
  const char* name;  // plugin name
  result_t (*init)(void** ctx, std::uint64_t commId, comm_config_v12_t* config, logger_t logFunction,
                   profiler_callback_t profFunction);           // per communicator
  result_t (*devices)(int* ndev);                               // *ndev = device count
  result_t (*getProperties)(int dev, properties_v12_t* props);  // 128-byte props
  result_t (*listen)(void* ctx, int dev, void* handle, void** listenComm);
  result_t (*connect)(void* ctx, int dev, void* handle, void** sendComm, device_handle_t** sendDevComm);
  result_t (*accept)(void* listenComm, void** recvComm, device_handle_t** recvDevComm);
  result_t (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  result_t (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type, std::uint64_t offset, int fd,
                          void** mhandle);  // may be NULL
  result_t (*deregMr)(void* comm, void* mhandle);
  result_t (*isend)(void* sendComm, void* data, std::size_t size, int tag, void* mhandle, void* pHandle,
                    void** request);
  result_t (*irecv)(void* recvComm, int n, void** data, std::size_t* sizes, int* tags, void** mhandles,
                    void** pHandles, void** request);
  result_t (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles, void** request);
  result_t (*test)(void* request, int* done, int* sizes);
  result_t (*closeSend)(void* sendComm);
  result_t (*closeRecv)(void* recvComm);
  result_t (*closeListen)(void* listenComm);
  result_t (*getDeviceMr)(void* comm, void* mhandle, void** dptr_mhandle);  // offload only
  result_t (*irecvConsumed)(void* recvComm, int n, void* request);          // offload only
  // Up to kMaxDevsPerNicV12 children. May be NULL (NCCL then uses the physical devices).
  result_t (*makeVDevice)(int* d, vdevice_props_v12_t* props);
  result_t (*finalize)(void* ctx);                             // per-communicator teardown
  result_t (*setNetAttr)(void* ctx, net_attr_v12_t* netAttr);  // may be NULL
};

// ncclNet_v10_t (NCCL 2.26-2.27): process-wide init, comm config passed to each connect, no ctx.
// Members without a comment behave as in net_v11_t.
struct net_v10_t {
  const char* name;  // plugin name
  // Once per process (NCCL's shim never calls it twice).
  result_t (*init)(logger_t logFunction, profiler_callback_t profFunction);
  result_t (*devices)(int* ndev);                                // *ndev = device count
  result_t (*getProperties)(int dev, properties_v10_t* props);   // 104-byte props
  result_t (*listen)(int dev, void* handle, void** listenComm);  // no ctx
  // No ctx; config = the communicator's settings (trafficClass) for this connection.
  result_t (*connect)(int dev, comm_config_v10_t* config, void* handle, void** sendComm,
                      device_handle_t** sendDevComm);
  result_t (*accept)(void* listenComm, void** recvComm, device_handle_t** recvDevComm);
  result_t (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  result_t (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type, std::uint64_t offset, int fd,
                          void** mhandle);  // may be NULL
  result_t (*deregMr)(void* comm, void* mhandle);
  // size_t size, with profiler handle (as v11).
  result_t (*isend)(void* sendComm, void* data, std::size_t size, int tag, void* mhandle, void* pHandle,
                    void** request);
  // size_t sizes, with profiler handles (as v11).
  result_t (*irecv)(void* recvComm, int n, void** data, std::size_t* sizes, int* tags, void** mhandles,
                    void** pHandles, void** request);
  // int sizes in every version.
  result_t (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles, void** request);
  result_t (*test)(void* request, int* done, int* sizes);  // int sizes in every version
  result_t (*closeSend)(void* sendComm);
  result_t (*closeRecv)(void* recvComm);
  result_t (*closeListen)(void* listenComm);
  result_t (*getDeviceMr)(void* comm, void* mhandle, void** dptr_mhandle);  // offload only
  result_t (*irecvConsumed)(void* recvComm, int n, void* request);          // offload only
  result_t (*makeVDevice)(int* d, vdevice_props_t* props);                  // vNIC fusion
};

// ncclNet_v9_t (NCCL 2.24-2.25): v10 without profiler callback, comm config and pHandles.
// Members without a comment behave as in net_v11_t.
struct net_v9_t {
  const char* name;                                              // plugin name
  result_t (*init)(logger_t logFunction);                        // once per process
  result_t (*devices)(int* ndev);                                // *ndev = device count
  result_t (*getProperties)(int dev, properties_v9_t* props);    // 104-byte props (= v10)
  result_t (*listen)(int dev, void* handle, void** listenComm);  // no ctx
  // No ctx, no config.
  result_t (*connect)(int dev, void* handle, void** sendComm, device_handle_t** sendDevComm);
  result_t (*accept)(void* listenComm, void** recvComm, device_handle_t** recvDevComm);
  result_t (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  result_t (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type, std::uint64_t offset, int fd,
                          void** mhandle);  // may be NULL
  result_t (*deregMr)(void* comm, void* mhandle);
  // size_t size, no profiler handle.
  result_t (*isend)(void* sendComm, void* data, std::size_t size, int tag, void* mhandle, void** request);
  // size_t sizes, no profiler handles.
  result_t (*irecv)(void* recvComm, int n, void** data, std::size_t* sizes, int* tags, void** mhandles,
                    void** request);
  result_t (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles, void** request);
  result_t (*test)(void* request, int* done, int* sizes);
  result_t (*closeSend)(void* sendComm);
  result_t (*closeRecv)(void* recvComm);
  result_t (*closeListen)(void* listenComm);
  result_t (*getDeviceMr)(void* comm, void* mhandle, void** dptr_mhandle);  // offload only
  result_t (*irecvConsumed)(void* recvComm, int n, void* request);          // offload only
  result_t (*makeVDevice)(int* d, vdevice_props_t* props);                  // vNIC fusion
};

// ncclNet_v8_t (NCCL 2.20-2.23): v9 with int transfer sizes (NCCL never exceeds kMaxNetSizeV8)
// and no makeVDevice. Members without a comment behave as in net_v11_t.
struct net_v8_t {
  const char* name;                                              // plugin name
  result_t (*init)(logger_t logFunction);                        // once per process
  result_t (*devices)(int* ndev);                                // *ndev = device count
  result_t (*getProperties)(int dev, properties_v8_t* props);    // 64-byte props
  result_t (*listen)(int dev, void* handle, void** listenComm);  // no ctx
  // No ctx, no config.
  result_t (*connect)(int dev, void* handle, void** sendComm, device_handle_t** sendDevComm);
  result_t (*accept)(void* listenComm, void** recvComm, device_handle_t** recvDevComm);
  // Registration sizes are size_t even in v8.
  result_t (*regMr)(void* comm, void* data, std::size_t size, int type, void** mhandle);
  result_t (*regMrDmaBuf)(void* comm, void* data, std::size_t size, int type, std::uint64_t offset, int fd,
                          void** mhandle);  // may be NULL
  result_t (*deregMr)(void* comm, void* mhandle);
  // int size, no profiler handle.
  result_t (*isend)(void* sendComm, void* data, int size, int tag, void* mhandle, void** request);
  // int sizes, no profiler handles.
  result_t (*irecv)(void* recvComm, int n, void** data, int* sizes, int* tags, void** mhandles,
                    void** request);
  result_t (*iflush)(void* recvComm, int n, void** data, int* sizes, void** mhandles, void** request);
  result_t (*test)(void* request, int* done, int* sizes);
  result_t (*closeSend)(void* sendComm);
  result_t (*closeRecv)(void* recvComm);
  result_t (*closeListen)(void* listenComm);
  result_t (*getDeviceMr)(void* comm, void* mhandle, void** dptr_mhandle);  // offload only
  result_t (*irecvConsumed)(void* recvComm, int n, void* request);          // offload only
};

}  // namespace moefabric::nccl::abi
