// Local multi-rank launcher: forks N ranks of a function and gives them an out-of-band allgather
// relayed by the parent over socketpairs. Used by the tests and perf tools (and moefabric-run).
// The parent enforces a deadline: on expiry every rank is killed and the report says which ranks
// had not finished.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "common/status.h"

namespace moefabric {

class OobChannel {
 public:
  OobChannel(int rank, int nranks, int fd) : rank_(rank), nranks_(nranks), fd_(fd) {}
  // A channel whose relay is not the local launcher (the cross-host rendezvous): `relay` names
  // it in errors; `keep` holds what the channel needs alive (the socket, rank 0's relay thread).
  OobChannel(int rank, int nranks, int fd, std::string relay, std::shared_ptr<void> keep)
      : rank_(rank), nranks_(nranks), fd_(fd), relay_(std::move(relay)), keep_(std::move(keep)) {}
  int rank() const { return rank_; }
  int nranks() const { return nranks_; }
  // Every rank contributes `bytes`; recv receives nranks * bytes in rank order. A system error
  // when a peer died or the parent is gone (the message says which).
  Status allgather(const void* send, void* recv, size_t bytes);
  Status barrier();

 private:
  int rank_, nranks_, fd_;
  std::string relay_ = "the launcher";
  std::shared_ptr<void> keep_;
};

struct LaunchResult {
  bool ok = false;
  std::string report;  // one line per failed rank: exit code, signal, or "killed at deadline"
};

// Runs fn(oob) in `nranks` forked processes; fn's return value is the rank's exit code.
LaunchResult launch_fork(int nranks, const std::function<int(OobChannel&)>& fn, int timeout_s);
// In a rank forked by launch_fork: its rank; elsewhere -1 (messages of the multi-process tests).
int launch_rank();

// Runs argv in `nranks` processes (moefabric-run); each finds its channel through the
// environment: MOEFABRIC_RANK, MOEFABRIC_NRANKS and MOEFABRIC_OOB_FD.
LaunchResult launch_exec(int nranks, char* const* argv, int timeout_s);

// The channel of a process started by launch_exec (MOEFABRIC_OOB_FD), else, when torchrun's or
// OpenMPI's variables are present, a cross-host rendezvous (common/rendezvous.h). OK with *out
// null when not started either way. A launch the environment names but that cannot be joined (a
// variable missing, rank 0 unreachable, a rank that never connected) fails with the reason.
Status oob_from_env(std::unique_ptr<OobChannel>* out);
// oob_from_env for a tool: the channel, or null when not launched; a launch that cannot be joined
// prints the reason on stderr and exits with code 2 (a tool must not run alone instead).
std::unique_ptr<OobChannel> oob_from_env_or_exit();

}  // namespace moefabric
