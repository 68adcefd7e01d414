// The sender's choice between an eager message, an RDMA write and waiting for the receiver's
// control entry, by the two buffers' memory types. On a machine without a GPU this decision is
// all a test can check: eager data must never be bound for a GPU receive buffer (the receiver
// would have to copy it there with a plain memcpy), whatever the sizes.
#include <catch2/catch.hpp>

#include "plugin/net/device.h"

using namespace moefabric::fabric;

namespace {
SendPathIn in(size_t size, MemType local, bool known, MemType remote, bool host_only) {
  SendPathIn p;
  p.size = size;
  p.local = local;
  p.known = known;
  p.remote = remote;
  p.peer_host_only = host_only;
  p.eager_max = 8192;
  p.eager_known_max = 8192;
  return p;
}
}  // namespace

TEST_CASE("send path: eager data never goes to a GPU receive buffer", "[send]") {
  const MemType kH = MemType::kHost, kC = MemType::kCuda;
  // Entry known, GPU receive buffer: a write, even for the smallest host message.
  for (size_t size : {size_t{0}, size_t{1}, size_t{8192}})
    REQUIRE(send_path(in(size, kH, true, kC, false)) == SendPath::kWrite);
  // Entry not known and the receiver may post GPU buffers: wait for the entry.
  for (size_t size : {size_t{0}, size_t{8}, size_t{8192}})
    REQUIRE(send_path(in(size, kH, false, kH, false)) == SendPath::kWait);
  // A receiver whose device takes no GPU buffers: eager before the entry as before.
  REQUIRE(send_path(in(100, kH, false, kH, true)) == SendPath::kEager);
}

TEST_CASE("send path: host to host keeps its eager limits", "[send]") {
  const MemType kH = MemType::kHost, kC = MemType::kCuda;
  REQUIRE(send_path(in(8192, kH, true, kH, true)) == SendPath::kEager);  // MOEFABRIC_EAGER_KNOWN
  REQUIRE(send_path(in(8193, kH, true, kH, true)) == SendPath::kWrite);
  REQUIRE(send_path(in(8193, kH, false, kH, true)) == SendPath::kWait);  // above MOEFABRIC_EAGER_MAX
  SendPathIn p = in(100, kH, true, kH, true);
  p.eager_known_max = 0;  // shm's default: writes once the entry is known
  REQUIRE(send_path(p) == SendPath::kWrite);
  // A GPU send buffer never goes eagerly (the message would copy device memory on the host).
  REQUIRE(send_path(in(100, kC, false, kH, true)) == SendPath::kWait);
  REQUIRE(send_path(in(100, kC, true, kH, true)) == SendPath::kWrite);
}
