// moefabric-run: runs a command as N local ranks (fork/exec) with an out-of-band allgather
// relayed through this process. Each rank sees MOEFABRIC_RANK, MOEFABRIC_NRANKS and
// MOEFABRIC_OOB_FD. A rank that dies makes the others' next allgather fail instead of hang, and
// the whole job is killed at the deadline with a report naming the ranks still running.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "common/launch.h"

int main(int argc, char** argv) {
  CLI::App app{"Run a command as N local moefabric ranks"};
  int n = 2, timeout = 3600;
  app.add_option("-n,--ranks", n, "number of ranks")->check(CLI::Range(1, 4096));
  app.add_option("-t,--timeout", timeout, "seconds before every rank is killed")->check(CLI::PositiveNumber);
  app.prefix_command();  // everything after the options is the command
  app.footer("Example: moefabric-run -n 4 moefabric-moe-perf --check");
  CLI11_PARSE(app, argc, argv);
  std::vector<std::string> cmd = app.remaining();
  if (cmd.empty()) {
    fprintf(stderr, "moefabric-run: no command given (see --help)\n");
    return 2;
  }
  std::vector<char*> args;
  for (auto& s : cmd) args.push_back(s.data());
  args.push_back(nullptr);
  moefabric::LaunchResult r = moefabric::launch_exec(n, args.data(), timeout);
  if (!r.ok) {
    fprintf(stderr, "moefabric-run: %s", r.report.c_str());
    return 1;
  }
  return 0;
}
