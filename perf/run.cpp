// moefabric-run: runs a command as N local ranks (fork/exec) with an out-of-band allgather
// relayed through this process. Each rank sees MOEFABRIC_RANK, MOEFABRIC_NRANKS and
// MOEFABRIC_OOB_FD. A rank that dies makes the others' next allgather fail instead of hang, and
// the whole job is killed at the deadline with a report naming the ranks still running.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/launch.h"
#include "perf/perf_tool.h"

int main(int argc, char** argv) {
  // mpirun's spelling "-np N" (one dash) is accepted too: it is rewritten to --np before parsing,
  // among the launcher's own options only (the command's arguments are left alone).
  for (int i = 1; i < argc && argv[i][0] == '-' && std::strcmp(argv[i], "--") != 0; ++i) {
    if (std::strcmp(argv[i], "-np") == 0) argv[i] = const_cast<char*>("--np");
    const std::string a = argv[i];
    if (a == "-n" || a == "-r" || a == "--np" || a == "--ranks" || a == "-T" || a == "--timeout")
      ++i;  // its value
  }
  CLI::App app{"Run a command as N local moefabric ranks: moefabric-run [OPTIONS] [--] COMMAND [ARGS...]"};
  moefabric::perf::init_app(app, argc, argv);
  int n = 2, timeout = 3600;
  app.add_option("-n,-r,--np,--ranks", n, "number of ranks (processes), as mpirun -n / -np")
      ->check(CLI::Range(1, 4096));
  app.add_option("-T,--timeout", timeout, "seconds before every rank is killed")->check(CLI::PositiveNumber);
  app.prefix_command();  // everything after the options (or after "--") is the command
  app.footer("Example: moefabric-run -n 4 -- moefabric-moe-perf -c 1");
  CLI11_PARSE(app, argc, argv);
  std::vector<std::string> cmd = app.remaining();
  if (!cmd.empty() && cmd[0] == "--") cmd.erase(cmd.begin());
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
