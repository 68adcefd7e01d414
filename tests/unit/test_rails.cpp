#include <catch2/catch.hpp>

#include "fabric/rail.h"

using namespace moefabric;
using namespace moefabric::fabric;

namespace {
std::vector<NicInfo> nics_named(std::initializer_list<const char*> names) {
  std::vector<NicInfo> v;
  for (const char* n : names) {
    NicInfo nic;
    nic.domain = nic.name = n;
    v.push_back(std::move(nic));
  }
  return v;
}
}  // namespace

TEST_CASE("rails: explicit specs group NICs into devices", "[rails]") {
  auto nics = nics_named({"eth0", "veth0a", "veth1a", "veth2a"});
  std::vector<std::vector<int>> g;
  REQUIRE(rail_groups("veth0a+veth1a", nics, {}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{1, 2}});
  REQUIRE(rail_groups("veth0a+veth1a,eth0", nics, {}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{1, 2}, {0}});
  REQUIRE(rail_groups("veth2a+veth0a", nics, {}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{3, 1}});  // rail order as written
  REQUIRE(rail_groups("veth0a,veth1a", nics, {}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{1}, {2}});

  Status s = rail_groups("veth0a+nope", nics, {}, &g);
  REQUIRE(s == Status::kInvalidUsage);
  REQUIRE(s.message().find("nope") != std::string::npos);
  REQUIRE(s.message().find("veth1a") != std::string::npos);  // lists what exists
  REQUIRE(rail_groups("veth0a+veth0a", nics, {}, &g) == Status::kInvalidUsage);
  REQUIRE(rail_groups("eth0+veth0a+veth1a+veth2a", nics, {}, &g) == Status::kOk);
  auto five = nics_named({"a", "b", "c", "d", "e"});
  REQUIRE(rail_groups("a+b+c+d+e", five, {}, &g) == Status::kInvalidUsage);
  REQUIRE(rail_groups(",", five, {}, &g) == Status::kInvalidUsage);
  REQUIRE(rail_spec_names("a+b,c") == std::vector<std::string>{"a", "b", "c"});
}

TEST_CASE("rails: default is one NIC per device, or the topology's GPU rail groups", "[rails]") {
  auto nics = nics_named({"mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "eth0"});
  std::vector<std::vector<int>> g;
  REQUIRE(rail_groups("", nics, {}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{0}, {1}, {2}, {3}, {4}});
  // Two GPUs with two rails each; a group naming a NIC we do not have keeps the others; a
  // single-NIC group is no group.
  REQUIRE(rail_groups("", nics, {{"mlx5_0", "mlx5_1"}, {"mlx5_2", "mlx5_3"}}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{0, 1}, {2, 3}, {4}});
  REQUIRE(rail_groups("", nics, {{"mlx5_1", "ib9"}, {"mlx5_2", "mlx5_3"}}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{0}, {1}, {2, 3}, {4}});
  // Two GPUs sharing the same rails: grouped once.
  REQUIRE(rail_groups("", nics, {{"mlx5_0", "mlx5_1"}, {"mlx5_0", "mlx5_1"}}, &g) == Status::kOk);
  REQUIRE(g == std::vector<std::vector<int>>{{0, 1}, {2}, {3}, {4}});
}
