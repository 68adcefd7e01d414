// Process facts the soak tests watch.
#pragma once

#include <cstdlib>
#include <fstream>
#include <string>

namespace testutil {

// Resident set size of this process in KiB (-1 when /proc is unavailable).
inline long rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return -1;
}

}  // namespace testutil
