#include "common/params.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <strings.h>

#include "common/log.h"

namespace moefabric {
namespace {

constexpr ParamDesc kTable[] = {
#define MF_PARAM_DESC(name, env, type, def, doc) {env, #type, def, doc},
    MOEFABRIC_PARAM_TABLE(MF_PARAM_DESC)
#undef MF_PARAM_DESC
};

const char* raw(const char* env, const char* def) {
  const char* v = std::getenv(env);
  return (v != nullptr && *v != '\0') ? v : def;
}

void parse(const char* env, const char* def, int64_t* out) {
  const char* v = raw(env, def);
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 0);
  if (errno != 0 || end == v || *end != '\0') {
    MF_WARN("%s=\"%s\" is not an integer; using the default %s", env, v, def);
    x = std::strtoll(def, nullptr, 0);
  }
  *out = x;
}

void parse(const char* env, const char* def, std::string* out) { *out = raw(env, def); }

void parse(const char* env, const char* def, bool* out) {
  const char* v = raw(env, def);
  if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on")) {
    *out = true;
  } else if (!strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off")) {
    *out = false;
  } else {
    MF_WARN("%s=\"%s\" is not a boolean; using the default %s", env, v, def);
    *out = !strcmp(def, "1");
  }
}

void show(const char* env, int64_t v) { MF_INFO(log::kEnv, "%s=%lld", env, static_cast<long long>(v)); }
void show(const char* env, const std::string& v) { MF_INFO(log::kEnv, "%s=%s", env, v.c_str()); }
void show(const char* env, bool v) { MF_INFO(log::kEnv, "%s=%d", env, v ? 1 : 0); }

// A string parameter that takes one of a few words: anything else warns and falls back.
void one_of(const char* env, std::string* v, const char* def, std::initializer_list<const char*> ok) {
  for (const char* w : ok)
    if (*v == w) return;
  std::string list;
  for (const char* w : ok) {
    if (!list.empty()) list += ", ";
    list += w;
  }
  MF_WARN("%s=\"%s\" is not one of %s; using the default %s", env, v->c_str(), list.c_str(), def);
  *v = def;
}

// An integer parameter with a valid range: anything outside warns and falls back.
void in_range(const char* env, int64_t* v, int64_t lo, int64_t hi, int64_t def, const char* def_means) {
  if (*v >= lo && *v <= hi) return;
  MF_WARN("%s=%lld is outside [%lld, %lld]; using the default %lld%s", env, static_cast<long long>(*v),
          static_cast<long long>(lo), static_cast<long long>(hi), static_cast<long long>(def), def_means);
  *v = def;
}

}  // namespace

Params Params::load() {
  Params p;
#define MF_PARAM_LOAD(name, env, type, def, doc) parse(env, def, &p.name);
  MOEFABRIC_PARAM_TABLE(MF_PARAM_LOAD)
#undef MF_PARAM_LOAD
  one_of("MOEFABRIC_PROTOCOL", &p.protocol, "auto", {"auto", "rdma", "tagged"});
  one_of("MOEFABRIC_GDR", &p.gdr, "auto", {"auto", "0", "1"});
  one_of("MOEFABRIC_MOE_STAGING", &p.moe_staging, "auto", {"auto", "host", "device"});
  one_of("MOEFABRIC_SPLIT_IMM", &p.split_imm, "auto", {"auto", "0", "1"});
  in_range("MOEFABRIC_NODE_SIZE", &p.node_size, 0, 4096, 0, " (nodes by host)");
  in_range("MOEFABRIC_STRIPE_MIN", &p.stripe_min, 0, int64_t{1} << 40, 262144, "");
  in_range("MOEFABRIC_EAGER_MAX", &p.eager_max, 0, int64_t{1} << 20, 8192, "");
  in_range("MOEFABRIC_EAGER_KNOWN", &p.eager_known, -1, int64_t{1} << 20, -1, " (by provider)");
  in_range("MOEFABRIC_TEST_SEQ_START", &p.test_seq_start, 0, (int64_t{1} << 32) - 1, 0, "");
  return p;
}

void Params::dump() const {
#define MF_PARAM_SHOW(name, env, type, def, doc) show(env, name);
  MOEFABRIC_PARAM_TABLE(MF_PARAM_SHOW)
#undef MF_PARAM_SHOW
}

const ParamDesc* param_table(int* count) {
  *count = static_cast<int>(sizeof kTable / sizeof kTable[0]);
  return kTable;
}

}  // namespace moefabric
