// Stale shm regions: only a dead process's region of our own PID namespace is ever removed.
// /dev/shm is often shared between containers with PID namespaces of their own, where a pid
// means another process or none at all.
#include <catch2/catch.hpp>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "fabric/info.h"

using namespace moefabric::fabric;

TEST_CASE("shm regions: names carry the PID namespace; only our namespace's dead are stale", "[shm]") {
  const uint64_t ns = pid_namespace_id();
  REQUIRE(ns != 0);  // Linux with /proc
  auto dead = [](long) { return false; };
  auto alive = [](long) { return true; };
  const std::string mine = shm_region_name(ns, 4242, 0xabcdef01u, 3);
  REQUIRE(mine.rfind("moefabric-", 0) == 0);
  REQUIRE(mine.size() < 64);  // fits an endpoint name (wire::kMaxAddrLen)
  CHECK(shm_region_stale(mine.c_str(), ns, dead));
  CHECK_FALSE(shm_region_stale(mine.c_str(), ns, alive));
  // Another namespace's region: whatever its pid means here, it is left alone.
  const std::string other = shm_region_name(ns + 1, 4242, 0xabcdef01u, 3);
  CHECK_FALSE(shm_region_stale(other.c_str(), ns, dead));
  // Names we cannot place (the old "<pid>-<random>-<n>" form, garbage, other programs'): kept.
  for (const char* n : {"moefabric-4242-abcdef01-3", "moefabric-", "moefabric-zz-1-2-3", "moefabric-1a2b",
                        "otherprog-1-2-3", "moefabric-1a2b--5-x"})
    CHECK_FALSE(shm_region_stale(n, ns, dead));
  CHECK_FALSE(shm_region_stale(mine.c_str(), 0, dead));  // our namespace unknown: nothing is stale
}

TEST_CASE("shm regions: the sweep unlinks a dead process's region of ours and nothing else", "[shm]") {
  char tmpl[] = "/tmp/moefabric-shm-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  const uint64_t ns = pid_namespace_id();
  // A pid no process has: past pid_max.
  const int gone = 1 << 22 | 12345;
  const std::string dead_ours = shm_region_name(ns, gone, 1, 0);
  const std::string live_ours = shm_region_name(ns, static_cast<int>(getpid()), 2, 0);
  const std::string dead_other_ns = shm_region_name(ns ^ 0x5a5a, gone, 3, 0);
  const std::string old_form = "moefabric-" + std::to_string(gone) + "-00000004-0";
  for (const std::string* n : {&dead_ours, &live_ours, &dead_other_ns, &old_form}) {
    int fd = open((dir + "/" + *n).c_str(), O_CREAT | O_WRONLY, 0600);
    REQUIRE(fd >= 0);
    close(fd);
  }
  remove_stale_shm_regions(dir.c_str());
  auto exists = [&](const std::string& n) { return access((dir + "/" + n).c_str(), F_OK) == 0; };
  CHECK_FALSE(exists(dead_ours));
  CHECK(exists(live_ours));
  CHECK(exists(dead_other_ns));  // before the fix: removed, cutting another container's process off
  CHECK(exists(old_form));
  for (const std::string* n : {&live_ours, &dead_other_ns, &old_form}) unlink((dir + "/" + *n).c_str());
  REQUIRE(rmdir(dir.c_str()) == 0);
}
