// Pins plugin/nccl/net_abi.h to NCCL 2.28.9's net-plugin ABI (v8..v11) and NCCL 2.30's v12 on
// LP64 (x86-64; aarch64 gives the same numbers). Every expected number below was computed by hand
// from NCCL's v2.28.9-1 layout and cross-checked once against NCCL's own headers in a throwaway
// build outside this repo; the v12 numbers were computed by hand from NCCL's v2.30.7-1 headers
// (no NCCL 2.30 is installed here to build against).
// The checks are compile-time (STATIC_REQUIRE = static_assert + a reported assertion): an ABI
// break fails the build.
#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "plugin/nccl/net_abi.h"

namespace abi = moefabric::nccl::abi;

// Offset and size of one field.
#define MF_ABI_FIELD(T, f, off, sz)        \
  STATIC_REQUIRE(offsetof(T, f) == (off)); \
  STATIC_REQUIRE(sizeof(T::f) == (sz))

// Offset of one function-table slot (every slot is one 8-byte pointer).
#define MF_ABI_SLOT(T, f, off) MF_ABI_FIELD(T, f, off, 8)

// Size and alignment of a whole struct; it must also be a C-compatible aggregate.
#define MF_ABI_STRUCT(T, sz, al)                \
  STATIC_REQUIRE(sizeof(T) == (sz));            \
  STATIC_REQUIRE(alignof(T) == (al));           \
  STATIC_REQUIRE(std::is_standard_layout_v<T>); \
  STATIC_REQUIRE(std::is_trivially_copyable_v<T>)

TEST_CASE("abi: LP64 data model the pinned numbers assume", "[abi]") {
  STATIC_REQUIRE(sizeof(void*) == 8);
  STATIC_REQUIRE(sizeof(void (*)()) == 8);
  STATIC_REQUIRE(sizeof(int) == 4);
  STATIC_REQUIRE(sizeof(long) == 8);
  STATIC_REQUIRE(sizeof(float) == 4);
  STATIC_REQUIRE(sizeof(std::size_t) == 8);
  STATIC_REQUIRE(alignof(std::uint64_t) == 8);
  STATIC_REQUIRE(alignof(std::size_t) == 8);
}

TEST_CASE("abi: result codes match ncclResult_t", "[abi]") {
  STATIC_REQUIRE(sizeof(abi::result_t) == 4);
  STATIC_REQUIRE(std::is_same_v<std::underlying_type_t<abi::result_t>, int>);
  STATIC_REQUIRE(abi::kSuccess == 0);
  STATIC_REQUIRE(abi::kUnhandledCudaError == 1);
  STATIC_REQUIRE(abi::kSystemError == 2);
  STATIC_REQUIRE(abi::kInternalError == 3);
  STATIC_REQUIRE(abi::kInvalidArgument == 4);
  STATIC_REQUIRE(abi::kInvalidUsage == 5);
  STATIC_REQUIRE(abi::kRemoteError == 6);
}

TEST_CASE("abi: plugin constants", "[abi]") {
  STATIC_REQUIRE(abi::kHandleMaxSize == 128);
  STATIC_REQUIRE(abi::kMaxRequests == 32);
  STATIC_REQUIRE(abi::kPtrHost == 1);
  STATIC_REQUIRE(abi::kPtrCuda == 2);
  STATIC_REQUIRE(abi::kPtrDmabuf == 4);
  STATIC_REQUIRE(abi::kOptionalRecvCompletion == 0x1);
  STATIC_REQUIRE(abi::kMultiRequest == 0x2);
  STATIC_REQUIRE(abi::kMaxNetSizeBytes == 1099511627776ULL);  // 1 TiB
  STATIC_REQUIRE(abi::kMaxNetSizeV8 == 1073741824ULL);        // 1 GiB
  STATIC_REQUIRE(abi::kMaxDevsPerNic == 4);
  STATIC_REQUIRE(abi::kMaxDevsPerNicV12 == 8);
  STATIC_REQUIRE(abi::kNetIdUndef == -1);
  STATIC_REQUIRE(abi::kTrafficClassUndef == -1);
  STATIC_REQUIRE(abi::kNetAttrUndef == -1);
  STATIC_REQUIRE(static_cast<std::uint32_t>(abi::kNetAttrUndef) == 0xffffffffU);
  STATIC_REQUIRE(abi::kNetDeviceHost == 0);
  STATIC_REQUIRE(abi::kNetDeviceUnpack == 1);
  STATIC_REQUIRE(abi::kNetDeviceGinProxy == 2);
  STATIC_REQUIRE(abi::kNetDeviceGinGdaki == 3);
  STATIC_REQUIRE(abi::kNetDeviceGinGpi == 4);
  STATIC_REQUIRE(abi::kNetDeviceUnpackVersion == 7);
  STATIC_REQUIRE(abi::kProfilerNetEventStart == 0);
  STATIC_REQUIRE(abi::kProfilerNetEventStop == 1);
  STATIC_REQUIRE(abi::kProfilerNetEventUpdate == 2);
  STATIC_REQUIRE(abi::kProfilerNetEventUpdateAndStop == 3);
}

TEST_CASE("abi: logger levels and subsystem flags", "[abi]") {
  STATIC_REQUIRE(abi::kLogNone == 0);
  STATIC_REQUIRE(abi::kLogVersion == 1);
  STATIC_REQUIRE(abi::kLogWarn == 2);
  STATIC_REQUIRE(abi::kLogInfo == 3);
  STATIC_REQUIRE(abi::kLogAbort == 4);
  STATIC_REQUIRE(abi::kLogTrace == 5);

  STATIC_REQUIRE(abi::kLogInit == 1);
  STATIC_REQUIRE(abi::kLogColl == 2);
  STATIC_REQUIRE(abi::kLogP2p == 4);
  STATIC_REQUIRE(abi::kLogShm == 8);
  STATIC_REQUIRE(abi::kLogNet == 16);
  STATIC_REQUIRE(abi::kLogGraph == 32);
  STATIC_REQUIRE(abi::kLogTune == 64);
  STATIC_REQUIRE(abi::kLogEnv == 128);
  STATIC_REQUIRE(abi::kLogAlloc == 256);
  STATIC_REQUIRE(abi::kLogCall == 512);
  STATIC_REQUIRE(abi::kLogProxy == 1024);
  STATIC_REQUIRE(abi::kLogNvls == 2048);
  STATIC_REQUIRE(abi::kLogBootstrap == 4096);
  STATIC_REQUIRE(abi::kLogReg == 8192);
  STATIC_REQUIRE(abi::kLogProfile == 16384);
  STATIC_REQUIRE(abi::kLogRas == 32768);
  STATIC_REQUIRE(abi::kLogAll == ~0UL);
}

TEST_CASE("abi: callback types", "[abi]") {
  STATIC_REQUIRE(
      std::is_same_v<abi::logger_t, void (*)(int, unsigned long, const char*, int, const char*, ...)>);
  STATIC_REQUIRE(
      std::is_same_v<abi::profiler_callback_t, abi::result_t (*)(void**, int, void*, std::int64_t, void*)>);
}

TEST_CASE("abi: vdevice_props_t layout", "[abi]") {
  using T = abi::vdevice_props_t;
  MF_ABI_STRUCT(T, 20, 4);
  MF_ABI_FIELD(T, ndevs, 0, 4);
  MF_ABI_FIELD(T, devs, 4, 16);
}

TEST_CASE("abi: vdevice_props_v12_t layout", "[abi]") {
  using T = abi::vdevice_props_v12_t;
  MF_ABI_STRUCT(T, 36, 4);
  MF_ABI_FIELD(T, ndevs, 0, 4);
  MF_ABI_FIELD(T, devs, 4, 32);
}

TEST_CASE("abi: comm_config_v11_t layout", "[abi]") {
  using T = abi::comm_config_v11_t;
  MF_ABI_STRUCT(T, 4, 4);
  MF_ABI_FIELD(T, trafficClass, 0, 4);
  STATIC_REQUIRE(std::is_same_v<abi::comm_config_v10_t, abi::comm_config_v11_t>);
  STATIC_REQUIRE(std::is_same_v<abi::comm_config_v12_t, abi::comm_config_v11_t>);
}

// v9..v12 share their first 64 bytes (name .. netDeviceVersion); they differ from vProps on.
TEMPLATE_TEST_CASE("abi: properties v9..v12, the shared head", "[abi]", abi::properties_v10_t,
                   abi::properties_v11_t, abi::properties_v12_t) {
  using T = TestType;
  MF_ABI_FIELD(T, name, 0, 8);
  MF_ABI_FIELD(T, pciPath, 8, 8);
  MF_ABI_FIELD(T, guid, 16, 8);
  MF_ABI_FIELD(T, ptrSupport, 24, 4);
  MF_ABI_FIELD(T, regIsGlobal, 28, 4);
  MF_ABI_FIELD(T, forceFlush, 32, 4);
  MF_ABI_FIELD(T, speed, 36, 4);
  MF_ABI_FIELD(T, port, 40, 4);
  MF_ABI_FIELD(T, latency, 44, 4);
  MF_ABI_FIELD(T, maxComms, 48, 4);
  MF_ABI_FIELD(T, maxRecvs, 52, 4);
  MF_ABI_FIELD(T, netDeviceType, 56, 4);
  MF_ABI_FIELD(T, netDeviceVersion, 60, 4);
  STATIC_REQUIRE(std::is_same_v<decltype(T::name), char*>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::pciPath), char*>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::guid), std::uint64_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::latency), float>);
}

TEST_CASE("abi: properties_v12_t layout", "[abi]") {
  using T = abi::properties_v12_t;
  MF_ABI_STRUCT(T, 128, 8);
  MF_ABI_FIELD(T, vProps, 64, 36);  // 8 children; 100..104 is padding
  MF_ABI_FIELD(T, maxP2pBytes, 104, 8);
  MF_ABI_FIELD(T, maxCollBytes, 112, 8);
  MF_ABI_FIELD(T, maxMultiRequestSize, 120, 4);
  MF_ABI_FIELD(T, railId, 124, 2);
  MF_ABI_FIELD(T, planeId, 126, 2);  // no tail padding
  STATIC_REQUIRE(std::is_same_v<decltype(T::vProps), abi::vdevice_props_v12_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::maxP2pBytes), std::size_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::maxCollBytes), std::size_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::railId), std::int16_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::planeId), std::int16_t>);
}

TEST_CASE("abi: properties_v11_t layout", "[abi]") {
  using T = abi::properties_v11_t;
  MF_ABI_STRUCT(T, 112, 8);
  MF_ABI_FIELD(T, vProps, 64, 20);  // 84..88 is padding
  MF_ABI_FIELD(T, maxP2pBytes, 88, 8);
  MF_ABI_FIELD(T, maxCollBytes, 96, 8);
  MF_ABI_FIELD(T, maxMultiRequestSize, 104, 4);  // 108..112 is tail padding
  STATIC_REQUIRE(std::is_same_v<decltype(T::vProps), abi::vdevice_props_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::maxP2pBytes), std::size_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::maxCollBytes), std::size_t>);
}

TEST_CASE("abi: properties_v10_t (= v9) layout", "[abi]") {
  using T = abi::properties_v10_t;
  STATIC_REQUIRE(std::is_same_v<abi::properties_v9_t, abi::properties_v10_t>);
  MF_ABI_STRUCT(T, 104, 8);
  MF_ABI_FIELD(T, vProps, 64, 20);
  MF_ABI_FIELD(T, maxP2pBytes, 88, 8);
  MF_ABI_FIELD(T, maxCollBytes, 96, 8);
  STATIC_REQUIRE(std::is_same_v<decltype(T::maxP2pBytes), std::size_t>);
}

TEST_CASE("abi: properties_v8_t layout", "[abi]") {
  using T = abi::properties_v8_t;
  MF_ABI_STRUCT(T, 64, 8);
  MF_ABI_FIELD(T, name, 0, 8);
  MF_ABI_FIELD(T, pciPath, 8, 8);
  MF_ABI_FIELD(T, guid, 16, 8);
  MF_ABI_FIELD(T, ptrSupport, 24, 4);
  MF_ABI_FIELD(T, regIsGlobal, 28, 4);
  MF_ABI_FIELD(T, speed, 32, 4);  // no forceFlush in v8: everything after shifts by 4
  MF_ABI_FIELD(T, port, 36, 4);
  MF_ABI_FIELD(T, latency, 40, 4);
  MF_ABI_FIELD(T, maxComms, 44, 4);
  MF_ABI_FIELD(T, maxRecvs, 48, 4);
  MF_ABI_FIELD(T, netDeviceType, 52, 4);
  MF_ABI_FIELD(T, netDeviceVersion, 56, 4);  // 60..64 is tail padding
  STATIC_REQUIRE(std::is_same_v<decltype(T::latency), float>);
}

TEST_CASE("abi: net_attr_v11_t layout", "[abi]") {
  using C = abi::net_comm_attr_v11_t;
  MF_ABI_STRUCT(C, 16, 4);
  MF_ABI_FIELD(C, maxConcurrentPeers, 0, 4);
  MF_ABI_FIELD(C, minConcurrentPeers, 4, 4);
  MF_ABI_FIELD(C, maxFlowsPerPeer, 8, 4);
  MF_ABI_FIELD(C, minFlowsPerPeer, 12, 4);
  STATIC_REQUIRE(std::is_same_v<decltype(C::maxConcurrentPeers), std::int32_t>);

  using T = abi::net_attr_v11_t;
  MF_ABI_STRUCT(T, 44, 4);
  MF_ABI_FIELD(T, sendCommAttr, 0, 16);
  MF_ABI_FIELD(T, recvCommAttr, 16, 16);
  MF_ABI_FIELD(T, op, 32, 4);
  MF_ABI_FIELD(T, algo, 36, 4);
  MF_ABI_FIELD(T, proto, 40, 4);
  STATIC_REQUIRE(std::is_same_v<decltype(T::op), std::uint32_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::algo), std::uint32_t>);
  STATIC_REQUIRE(std::is_same_v<decltype(T::proto), std::uint32_t>);
  STATIC_REQUIRE(std::is_same_v<abi::net_comm_attr_v12_t, abi::net_comm_attr_v11_t>);
  STATIC_REQUIRE(std::is_same_v<abi::net_attr_v12_t, abi::net_attr_v11_t>);
}

TEST_CASE("abi: device_handle_t layout", "[abi]") {
  using T = abi::device_handle_t;
  MF_ABI_STRUCT(T, 32, 8);
  MF_ABI_FIELD(T, netDeviceType, 0, 4);
  MF_ABI_FIELD(T, netDeviceVersion, 4, 4);
  MF_ABI_FIELD(T, handle, 8, 8);
  MF_ABI_FIELD(T, size, 16, 8);
  MF_ABI_FIELD(T, needsProxyProgress, 24, 4);  // 28..32 is tail padding
}

// v12 keeps v11's members in v11's order: one list pins both.
TEMPLATE_TEST_CASE("abi: net_v11_t and net_v12_t slots", "[abi]", abi::net_v11_t, abi::net_v12_t) {
  using T = TestType;
  MF_ABI_STRUCT(T, 176, 8);
  MF_ABI_SLOT(T, name, 0);
  MF_ABI_SLOT(T, init, 8);
  MF_ABI_SLOT(T, devices, 16);
  MF_ABI_SLOT(T, getProperties, 24);
  MF_ABI_SLOT(T, listen, 32);
  MF_ABI_SLOT(T, connect, 40);
  MF_ABI_SLOT(T, accept, 48);
  MF_ABI_SLOT(T, regMr, 56);
  MF_ABI_SLOT(T, regMrDmaBuf, 64);
  MF_ABI_SLOT(T, deregMr, 72);
  MF_ABI_SLOT(T, isend, 80);
  MF_ABI_SLOT(T, irecv, 88);
  MF_ABI_SLOT(T, iflush, 96);
  MF_ABI_SLOT(T, test, 104);
  MF_ABI_SLOT(T, closeSend, 112);
  MF_ABI_SLOT(T, closeRecv, 120);
  MF_ABI_SLOT(T, closeListen, 128);
  MF_ABI_SLOT(T, getDeviceMr, 136);
  MF_ABI_SLOT(T, irecvConsumed, 144);
  MF_ABI_SLOT(T, makeVDevice, 152);
  MF_ABI_SLOT(T, finalize, 160);
  MF_ABI_SLOT(T, setNetAttr, 168);
}

TEST_CASE("abi: net_v10_t slots", "[abi]") {
  using T = abi::net_v10_t;
  MF_ABI_STRUCT(T, 160, 8);
  MF_ABI_SLOT(T, name, 0);
  MF_ABI_SLOT(T, init, 8);
  MF_ABI_SLOT(T, devices, 16);
  MF_ABI_SLOT(T, getProperties, 24);
  MF_ABI_SLOT(T, listen, 32);
  MF_ABI_SLOT(T, connect, 40);
  MF_ABI_SLOT(T, accept, 48);
  MF_ABI_SLOT(T, regMr, 56);
  MF_ABI_SLOT(T, regMrDmaBuf, 64);
  MF_ABI_SLOT(T, deregMr, 72);
  MF_ABI_SLOT(T, isend, 80);
  MF_ABI_SLOT(T, irecv, 88);
  MF_ABI_SLOT(T, iflush, 96);
  MF_ABI_SLOT(T, test, 104);
  MF_ABI_SLOT(T, closeSend, 112);
  MF_ABI_SLOT(T, closeRecv, 120);
  MF_ABI_SLOT(T, closeListen, 128);
  MF_ABI_SLOT(T, getDeviceMr, 136);
  MF_ABI_SLOT(T, irecvConsumed, 144);
  MF_ABI_SLOT(T, makeVDevice, 152);
}

TEST_CASE("abi: net_v9_t slots", "[abi]") {
  using T = abi::net_v9_t;
  MF_ABI_STRUCT(T, 160, 8);
  MF_ABI_SLOT(T, name, 0);
  MF_ABI_SLOT(T, init, 8);
  MF_ABI_SLOT(T, devices, 16);
  MF_ABI_SLOT(T, getProperties, 24);
  MF_ABI_SLOT(T, listen, 32);
  MF_ABI_SLOT(T, connect, 40);
  MF_ABI_SLOT(T, accept, 48);
  MF_ABI_SLOT(T, regMr, 56);
  MF_ABI_SLOT(T, regMrDmaBuf, 64);
  MF_ABI_SLOT(T, deregMr, 72);
  MF_ABI_SLOT(T, isend, 80);
  MF_ABI_SLOT(T, irecv, 88);
  MF_ABI_SLOT(T, iflush, 96);
  MF_ABI_SLOT(T, test, 104);
  MF_ABI_SLOT(T, closeSend, 112);
  MF_ABI_SLOT(T, closeRecv, 120);
  MF_ABI_SLOT(T, closeListen, 128);
  MF_ABI_SLOT(T, getDeviceMr, 136);
  MF_ABI_SLOT(T, irecvConsumed, 144);
  MF_ABI_SLOT(T, makeVDevice, 152);
}

TEST_CASE("abi: net_v8_t slots", "[abi]") {
  using T = abi::net_v8_t;
  MF_ABI_STRUCT(T, 152, 8);
  MF_ABI_SLOT(T, name, 0);
  MF_ABI_SLOT(T, init, 8);
  MF_ABI_SLOT(T, devices, 16);
  MF_ABI_SLOT(T, getProperties, 24);
  MF_ABI_SLOT(T, listen, 32);
  MF_ABI_SLOT(T, connect, 40);
  MF_ABI_SLOT(T, accept, 48);
  MF_ABI_SLOT(T, regMr, 56);
  MF_ABI_SLOT(T, regMrDmaBuf, 64);
  MF_ABI_SLOT(T, deregMr, 72);
  MF_ABI_SLOT(T, isend, 80);
  MF_ABI_SLOT(T, irecv, 88);
  MF_ABI_SLOT(T, iflush, 96);
  MF_ABI_SLOT(T, test, 104);
  MF_ABI_SLOT(T, closeSend, 112);
  MF_ABI_SLOT(T, closeRecv, 120);
  MF_ABI_SLOT(T, closeListen, 128);
  MF_ABI_SLOT(T, getDeviceMr, 136);
  MF_ABI_SLOT(T, irecvConsumed, 144);
}

// Argument types are as much a part of the ABI as offsets (int vs size_t sizes, pHandle, ctx
// and config arguments): pin each version's exact signatures.
namespace {
using abi::result_t;
using dh = abi::device_handle_t;
using std::size_t;
using std::uint64_t;
}  // namespace

#define MF_ABI_SIG(T, f, ...) STATIC_REQUIRE(std::is_same_v<decltype(T::f), result_t (*)(__VA_ARGS__)>)

// The structs each of the two versions passes; every other argument is the same in both.
template <class T>
struct ctx_args;
template <>
struct ctx_args<abi::net_v11_t> {
  using config = abi::comm_config_v11_t;
  using props = abi::properties_v11_t;
  using vprops = abi::vdevice_props_t;
  using attr = abi::net_attr_v11_t;
};
template <>
struct ctx_args<abi::net_v12_t> {
  using config = abi::comm_config_v12_t;
  using props = abi::properties_v12_t;
  using vprops = abi::vdevice_props_v12_t;
  using attr = abi::net_attr_v12_t;
};

TEMPLATE_TEST_CASE("abi: net_v11_t and net_v12_t signatures", "[abi]", abi::net_v11_t, abi::net_v12_t) {
  using T = TestType;
  using A = ctx_args<T>;
  STATIC_REQUIRE(std::is_same_v<decltype(T::name), const char*>);
  MF_ABI_SIG(T, init, void**, uint64_t, typename A::config*, abi::logger_t, abi::profiler_callback_t);
  MF_ABI_SIG(T, devices, int*);
  MF_ABI_SIG(T, getProperties, int, typename A::props*);
  MF_ABI_SIG(T, listen, void*, int, void*, void**);
  MF_ABI_SIG(T, connect, void*, int, void*, void**, dh**);
  MF_ABI_SIG(T, accept, void*, void**, dh**);
  MF_ABI_SIG(T, regMr, void*, void*, size_t, int, void**);
  MF_ABI_SIG(T, regMrDmaBuf, void*, void*, size_t, int, uint64_t, int, void**);
  MF_ABI_SIG(T, deregMr, void*, void*);
  MF_ABI_SIG(T, isend, void*, void*, size_t, int, void*, void*, void**);
  MF_ABI_SIG(T, irecv, void*, int, void**, size_t*, int*, void**, void**, void**);
  MF_ABI_SIG(T, iflush, void*, int, void**, int*, void**, void**);
  MF_ABI_SIG(T, test, void*, int*, int*);
  MF_ABI_SIG(T, closeSend, void*);
  MF_ABI_SIG(T, closeRecv, void*);
  MF_ABI_SIG(T, closeListen, void*);
  MF_ABI_SIG(T, getDeviceMr, void*, void*, void**);
  MF_ABI_SIG(T, irecvConsumed, void*, int, void*);
  MF_ABI_SIG(T, makeVDevice, int*, typename A::vprops*);
  MF_ABI_SIG(T, finalize, void*);
  MF_ABI_SIG(T, setNetAttr, void*, typename A::attr*);
}

TEST_CASE("abi: net_v10_t signatures", "[abi]") {
  using T = abi::net_v10_t;
  STATIC_REQUIRE(std::is_same_v<decltype(T::name), const char*>);
  MF_ABI_SIG(T, init, abi::logger_t, abi::profiler_callback_t);
  MF_ABI_SIG(T, devices, int*);
  MF_ABI_SIG(T, getProperties, int, abi::properties_v10_t*);
  MF_ABI_SIG(T, listen, int, void*, void**);
  MF_ABI_SIG(T, connect, int, abi::comm_config_v10_t*, void*, void**, dh**);
  MF_ABI_SIG(T, accept, void*, void**, dh**);
  MF_ABI_SIG(T, regMr, void*, void*, size_t, int, void**);
  MF_ABI_SIG(T, regMrDmaBuf, void*, void*, size_t, int, uint64_t, int, void**);
  MF_ABI_SIG(T, deregMr, void*, void*);
  MF_ABI_SIG(T, isend, void*, void*, size_t, int, void*, void*, void**);
  MF_ABI_SIG(T, irecv, void*, int, void**, size_t*, int*, void**, void**, void**);
  MF_ABI_SIG(T, iflush, void*, int, void**, int*, void**, void**);
  MF_ABI_SIG(T, test, void*, int*, int*);
  MF_ABI_SIG(T, closeSend, void*);
  MF_ABI_SIG(T, closeRecv, void*);
  MF_ABI_SIG(T, closeListen, void*);
  MF_ABI_SIG(T, getDeviceMr, void*, void*, void**);
  MF_ABI_SIG(T, irecvConsumed, void*, int, void*);
  MF_ABI_SIG(T, makeVDevice, int*, abi::vdevice_props_t*);
}

TEST_CASE("abi: net_v9_t signatures", "[abi]") {
  using T = abi::net_v9_t;
  STATIC_REQUIRE(std::is_same_v<decltype(T::name), const char*>);
  MF_ABI_SIG(T, init, abi::logger_t);
  MF_ABI_SIG(T, devices, int*);
  MF_ABI_SIG(T, getProperties, int, abi::properties_v9_t*);
  MF_ABI_SIG(T, listen, int, void*, void**);
  MF_ABI_SIG(T, connect, int, void*, void**, dh**);
  MF_ABI_SIG(T, accept, void*, void**, dh**);
  MF_ABI_SIG(T, regMr, void*, void*, size_t, int, void**);
  MF_ABI_SIG(T, regMrDmaBuf, void*, void*, size_t, int, uint64_t, int, void**);
  MF_ABI_SIG(T, deregMr, void*, void*);
  MF_ABI_SIG(T, isend, void*, void*, size_t, int, void*, void**);
  MF_ABI_SIG(T, irecv, void*, int, void**, size_t*, int*, void**, void**);
  MF_ABI_SIG(T, iflush, void*, int, void**, int*, void**, void**);
  MF_ABI_SIG(T, test, void*, int*, int*);
  MF_ABI_SIG(T, closeSend, void*);
  MF_ABI_SIG(T, closeRecv, void*);
  MF_ABI_SIG(T, closeListen, void*);
  MF_ABI_SIG(T, getDeviceMr, void*, void*, void**);
  MF_ABI_SIG(T, irecvConsumed, void*, int, void*);
  MF_ABI_SIG(T, makeVDevice, int*, abi::vdevice_props_t*);
}

TEST_CASE("abi: net_v8_t signatures", "[abi]") {
  using T = abi::net_v8_t;
  STATIC_REQUIRE(std::is_same_v<decltype(T::name), const char*>);
  MF_ABI_SIG(T, init, abi::logger_t);
  MF_ABI_SIG(T, devices, int*);
  MF_ABI_SIG(T, getProperties, int, abi::properties_v8_t*);
  MF_ABI_SIG(T, listen, int, void*, void**);
  MF_ABI_SIG(T, connect, int, void*, void**, dh**);
  MF_ABI_SIG(T, accept, void*, void**, dh**);
  MF_ABI_SIG(T, regMr, void*, void*, size_t, int, void**);
  MF_ABI_SIG(T, regMrDmaBuf, void*, void*, size_t, int, uint64_t, int, void**);
  MF_ABI_SIG(T, deregMr, void*, void*);
  MF_ABI_SIG(T, isend, void*, void*, int, int, void*, void**);
  MF_ABI_SIG(T, irecv, void*, int, void**, int*, int*, void**, void**);
  MF_ABI_SIG(T, iflush, void*, int, void**, int*, void**, void**);
  MF_ABI_SIG(T, test, void*, int*, int*);
  MF_ABI_SIG(T, closeSend, void*);
  MF_ABI_SIG(T, closeRecv, void*);
  MF_ABI_SIG(T, closeListen, void*);
  MF_ABI_SIG(T, getDeviceMr, void*, void*, void**);
  MF_ABI_SIG(T, irecvConsumed, void*, int, void*);
}
