// Sizes every user of the libfabric core shares: the net plugin's wire format and the MoE
// library's rails are both bounded by them.
#pragma once

#include <cstddef>

namespace moefabric::fabric {

inline constexpr size_t kMaxAddrLen = 64;  // endpoint names (EFA 32 B, tcp sockaddr_in6 28 B)
inline constexpr int kMaxRails = 4;        // NICs (own endpoints) one device may stripe over

}  // namespace moefabric::fabric
