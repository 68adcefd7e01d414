// What each kind of registration lets a peer do (libfabric access flags), without a NIC.
#include <catch2/catch.hpp>

#include "fabric/mr.h"

using namespace moefabric::fabric;

TEST_CASE("mr: send-side and message buffer registrations carry no remote access", "[mr]") {
  constexpr uint64_t kRemote = FI_REMOTE_READ | FI_REMOTE_WRITE;
  // Send buffers (through a send comm), the message slabs and the MoE send blocks.
  REQUIRE((MrCache::fi_access(MrAccess::kLocal) & kRemote) == 0);
  // Receive buffers: peers write into them; nobody reads remotely.
  REQUIRE((MrCache::fi_access(MrAccess::kRemoteWrite) & kRemote) == FI_REMOTE_WRITE);
  // Both may be used locally in any role (NCCL may send from a buffer it registered to receive).
  for (MrAccess a : {MrAccess::kLocal, MrAccess::kRemoteWrite})
    REQUIRE((MrCache::fi_access(a) & (FI_SEND | FI_RECV | FI_READ | FI_WRITE)) ==
            (FI_SEND | FI_RECV | FI_READ | FI_WRITE));
}
