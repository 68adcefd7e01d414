#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/params.h"

TEST_CASE("params: defaults, parsing and bad values", "[params]") {
  unsetenv("MOEFABRIC_EAGER_MAX");
  auto p = moefabric::Params::load();
  REQUIRE(p.eager_max == 8192);
  REQUIRE(p.mr_cache);
  setenv("MOEFABRIC_EAGER_MAX", "4096", 1);
  setenv("MOEFABRIC_MR_CACHE", "off", 1);
  p = moefabric::Params::load();
  REQUIRE(p.eager_max == 4096);
  REQUIRE_FALSE(p.mr_cache);
  setenv("MOEFABRIC_EAGER_MAX", "12abc", 1);  // malformed: warning + default
  p = moefabric::Params::load();
  REQUIRE(p.eager_max == 8192);
  unsetenv("MOEFABRIC_EAGER_MAX");
  unsetenv("MOEFABRIC_MR_CACHE");
}

TEST_CASE("params: word-valued variables reject unknown words", "[params]") {
  setenv("MOEFABRIC_SPLIT_IMM", "0", 1);
  setenv("MOEFABRIC_PROTOCOL", "tagged", 1);
  auto p = moefabric::Params::load();
  REQUIRE(p.split_imm == "0");
  REQUIRE(p.protocol == "tagged");
  setenv("MOEFABRIC_SPLIT_IMM", "yes please", 1);  // warning + default
  setenv("MOEFABRIC_PROTOCOL", "rdm", 1);
  setenv("MOEFABRIC_GDR", "2", 1);
  p = moefabric::Params::load();
  REQUIRE(p.split_imm == "auto");
  REQUIRE(p.protocol == "auto");
  REQUIRE(p.gdr == "auto");
  unsetenv("MOEFABRIC_SPLIT_IMM");
  unsetenv("MOEFABRIC_PROTOCOL");
  unsetenv("MOEFABRIC_GDR");
}

TEST_CASE("params: every environment variable is documented in README.md", "[params][docs]") {
  std::ifstream f(MOEFABRIC_SOURCE_ROOT "/README.md");
  REQUIRE(f.good());
  std::stringstream ss;
  ss << f.rdbuf();
  std::string readme = ss.str();
  int n = 0;
  const moefabric::ParamDesc* t = moefabric::param_table(&n);
  REQUIRE(n > 5);
  for (int i = 0; i < n; ++i) {
    INFO(t[i].env);
    REQUIRE(readme.find(std::string("`") + t[i].env + "`") != std::string::npos);
  }
}

TEST_CASE("params: CUDA MoE fabric switches", "[params]") {
  unsetenv("MOEFABRIC_FORCE_FABRIC");
  unsetenv("MOEFABRIC_NODE_SIZE");
  auto p = moefabric::Params::load();
  REQUIRE_FALSE(p.force_fabric);
  REQUIRE(p.node_size == 0);
  setenv("MOEFABRIC_FORCE_FABRIC", "1", 1);
  setenv("MOEFABRIC_NODE_SIZE", "2", 1);
  p = moefabric::Params::load();
  REQUIRE(p.force_fabric);
  REQUIRE(p.node_size == 2);
  setenv("MOEFABRIC_NODE_SIZE", "-3", 1);  // out of range: warning + default
  p = moefabric::Params::load();
  REQUIRE(p.node_size == 0);
  unsetenv("MOEFABRIC_FORCE_FABRIC");
  unsetenv("MOEFABRIC_NODE_SIZE");
}

TEST_CASE("params: integer ranges fall back to the default with a warning", "[params]") {
  setenv("MOEFABRIC_STRIPE_MIN", "-5", 1);
  setenv("MOEFABRIC_EAGER_KNOWN", "-7", 1);
  setenv("MOEFABRIC_EAGER_MAX", "-1", 1);
  auto p = moefabric::Params::load();
  REQUIRE(p.stripe_min == 262144);
  REQUIRE(p.eager_known == -1);
  REQUIRE(p.eager_max == 8192);
  setenv("MOEFABRIC_STRIPE_MIN", "0", 1);
  setenv("MOEFABRIC_EAGER_KNOWN", "4096", 1);
  setenv("MOEFABRIC_EAGER_MAX", "16384", 1);
  p = moefabric::Params::load();
  REQUIRE(p.stripe_min == 0);
  REQUIRE(p.eager_known == 4096);
  REQUIRE(p.eager_max == 16384);
  unsetenv("MOEFABRIC_STRIPE_MIN");
  unsetenv("MOEFABRIC_EAGER_KNOWN");
  unsetenv("MOEFABRIC_EAGER_MAX");
}
