// ncclMoeGetVersion against the header's NCCL_MOE_VERSION_CODE and meson's project version
// (common/version.h), through the shared library as an application sees it.
#include <catch2/catch.hpp>

#include <cstdio>
#include <string>

#include "common/version.h"
#include "include/moefabric/nccl_moe.h"

TEST_CASE("ncclMoeGetVersion: the library's version, encoded like NCCL's", "[version]") {
  int v = -1;
  REQUIRE(ncclMoeGetVersion(&v) == ncclSuccess);
  REQUIRE(v == NCCL_MOE_VERSION_CODE);
  REQUIRE(NCCL_MOE_VERSION_CODE == NCCL_MOE_VERSION(NCCL_MOE_MAJOR, NCCL_MOE_MINOR, NCCL_MOE_PATCH));
  REQUIRE(NCCL_MOE_VERSION(1, 2, 3) == 10203);
  int major = -1, minor = -1, patch = -1;
  REQUIRE(std::sscanf(MOEFABRIC_VERSION, "%d.%d.%d", &major, &minor, &patch) == 3);
  REQUIRE(v == major * 10000 + minor * 100 + patch);
  REQUIRE(std::string(MOEFABRIC_COMMIT).size() > 0);
}

TEST_CASE("ncclMoeGetVersion: a NULL pointer is an invalid argument", "[version]") {
  REQUIRE(ncclMoeGetVersion(nullptr) == ncclInvalidArgument);
  REQUIRE(std::string(ncclMoeGetLastError(nullptr)).find("ncclMoeGetVersion") != std::string::npos);
}
