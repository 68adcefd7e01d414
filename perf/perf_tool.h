// What the perf tools share: --version, the nccl-tests style options (-b/-e/-f sizes, -c check),
// and the JSON files' common schema (docs/perf-json.md): {"metadata", "config", "results"}.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "common/status.h"

namespace moefabric::perf {

using Json = nlohmann::ordered_json;

inline constexpr const char* kJsonSchema = "moefabric-perf/1";

// "moefabric 0.1.0 (a10a238c1234)": the version and the commit the tool was built from.
std::string version_line();

// Every tool's CLI::App: --version, defaults shown in --help, and argv kept for the JSON
// metadata's command_line.
void init_app(CLI::App& app, int argc, char** argv);

// -b,--min-bytes / -e,--max-bytes (K/M/G suffixes, powers of 1024) and -f,--step-factor, as in
// nccl-tests; parsing fails with a clear message when min > max.
struct Sweep {
  uint64_t min_bytes = 8, max_bytes = 256u << 20;
  int factor = 2;
};
void add_sweep(CLI::App& app, Sweep* sweep, int max_factor);

// -c,--check <0/1> as in nccl-tests; "-c" or "--check" alone means 1.
CLI::Option* add_check(CLI::App& app, bool* check, const std::string& what);

// The "metadata" object. Fields a tool does not know stay null.
struct Meta {
  std::string tool;
  std::optional<std::string> provider, gpu, nccl_version;
};
Json metadata(const Meta& m);

// {"metadata": metadata(m), "config": config, "results": results}: the document every perf tool
// writes (tools may add keys after these).
Json document(const Meta& m, Json config, Json results);

// Writes the document to `path` (2-space indented); a system error saying so when it cannot.
Status write_json(const std::string& path, const Json& doc);

// The libfabric provider the MoE proxies pick in this environment (MOEFABRIC_PROVIDER,
// FI_PROVIDER or the default order), nullopt when none is usable. Defined in perf_fabric.cpp
// (perf_fabric_lib): only the tools that link libfabric call it.
std::optional<std::string> moe_provider();

// NCCL's version code (ncclGetVersion) as "2.28.9".
std::string nccl_version_string(int code);

}  // namespace moefabric::perf
