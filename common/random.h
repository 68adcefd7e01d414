// Unpredictable values from the kernel (getrandom): listen nonces, connect tokens, MR keys.
// Never a seeded PRNG: a peer must not be able to guess one value from another.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"

namespace moefabric {

// Fills buf with len random bytes; kSystemError (logged) when the kernel cannot provide them.
Status random_bytes(void* buf, size_t len);
// A random 64-bit value that is never 0 (0 means "none" wherever these are stored).
Status random_nonzero_u64(uint64_t* out);

}  // namespace moefabric
