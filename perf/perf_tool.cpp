#include "perf/perf_tool.h"

#include <unistd.h>

#include <fstream>
#include <vector>

#include "common/version.h"

namespace moefabric::perf {
namespace {

std::string g_command_line;

// One argument as a POSIX shell would need it to read it back.
std::string shell_quote(const std::string& a) {
  if (!a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                        "@%+=:,./_-") == std::string::npos)
    return a;
  std::string q = "'";
  for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// 268435456 -> "256M": sizes shown the way they are typed.
std::string size_str(uint64_t v) {
  const char* units = "KMGT";
  int u = -1;
  while (v >= 1024 && v % 1024 == 0 && u < 3) v /= 1024, ++u;
  return std::to_string(v) + (u >= 0 ? std::string(1, units[u]) : "");
}

}  // namespace

std::string version_line() {
  return std::string("moefabric ") + MOEFABRIC_VERSION + " (" + MOEFABRIC_COMMIT + ")";
}

void init_app(CLI::App& app, int argc, char** argv) {
  app.set_version_flag("--version", version_line());
  app.option_defaults()->always_capture_default();
  g_command_line.clear();
  for (int i = 0; i < argc; ++i) g_command_line += (i ? " " : "") + shell_quote(argv[i]);
}

void add_sweep(CLI::App& app, Sweep* s, int max_factor) {
  app.add_option("-b,--min-bytes,--minbytes", s->min_bytes, "smallest message size (K/M/G: powers of 1024)")
      ->transform(CLI::AsSizeValue(false).description(""))
      ->type_name("SIZE")
      ->default_str(size_str(s->min_bytes));
  app.add_option("-e,--max-bytes,--maxbytes", s->max_bytes, "largest message size")
      ->transform(CLI::AsSizeValue(false).description(""))
      ->type_name("SIZE")
      ->default_str(size_str(s->max_bytes));
  app.add_option("-f,--step-factor,--stepfactor,--factor", s->factor, "size multiplication factor")
      ->check(CLI::Range(2, max_factor));
  app.parse_complete_callback([s] {
    if (s->min_bytes < 1) throw CLI::ValidationError("-b,--min-bytes", "must be at least 1 byte");
    if (s->min_bytes > s->max_bytes)
      throw CLI::ValidationError("-b,--min-bytes", std::to_string(s->min_bytes) +
                                                       " is larger than -e,--max-bytes " +
                                                       std::to_string(s->max_bytes) + ": need min <= max");
  });
}

CLI::Option* add_check(CLI::App& app, bool* check, const std::string& what) {
  const bool dflt = *check;
  return app
      .add_option_function<std::string>(
          "-c,--check",
          [check](const std::string& v) {
            if (v.empty()) {
              *check = true;
              return;
            }
            size_t end = 0;
            long n = -1;
            try {
              n = std::stol(v, &end);
            } catch (const std::exception&) {
            }
            if (end != v.size() || n < 0)
              throw CLI::ValidationError("-c,--check", "takes 0 or 1, not '" + v + "'");
            *check = n != 0;
          },
          what + " (0/1; -c alone: 1; default " + (dflt ? "1" : "0") + ")")
      ->expected(0, 1)
      ->type_name("[0/1]");
}

Json metadata(const Meta& m) {
  auto opt = [](const std::optional<std::string>& v) { return v ? Json(*v) : Json(nullptr); };
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  return Json{{"tool", m.tool},
              {"version", MOEFABRIC_VERSION},
              {"commit", MOEFABRIC_COMMIT},
              {"provider", opt(m.provider)},
              {"gpu", opt(m.gpu)},
              {"nccl_version", opt(m.nccl_version)},
              {"command_line", g_command_line},
              {"hostname", host},
              {"schema", kJsonSchema}};
}

Json document(const Meta& m, Json config, Json results) {
  return Json{{"metadata", metadata(m)}, {"config", std::move(config)}, {"results", std::move(results)}};
}

Status write_json(const std::string& path, const Json& doc) {
  std::ofstream f(path);
  f << doc.dump(2, ' ', false, Json::error_handler_t::replace) << "\n";
  f.close();
  if (f) return {};
  return Status::system_error("cannot write " + path);
}

std::string nccl_version_string(int code) {
  // NCCL encodes 2.9 and later as X*10000 + Y*100 + Z, earlier ones as X*1000 + Y*100 + Z.
  const int major = code >= 10000 ? code / 10000 : code / 1000;
  const int minor = code >= 10000 ? code / 100 % 100 : code / 100 % 10;
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(code % 100);
}

}  // namespace moefabric::perf
