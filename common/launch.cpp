#include "common/launch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "common/rendezvous.h"

namespace moefabric {

namespace {
int g_launch_rank = -1;
}  // namespace

int launch_rank() { return g_launch_rank; }

namespace {

constexpr uint64_t kPeerLost = ~0ull;
// A relay's failure with its text (u32 length, then the text): the cross-host rendezvous.
constexpr uint64_t kRelayFailed = ~0ull - 1;

bool write_full(int fd, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    // send: no SIGPIPE when the relay is gone (the channel is a socket); write for anything else.
    ssize_t w = ::send(fd, b, n, MSG_NOSIGNAL);
    if (w < 0 && errno == ENOTSOCK) w = ::write(fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    b += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_full(int fd, void* p, size_t n) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    ssize_t r = ::read(fd, b, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    b += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

Status OobChannel::allgather(const void* send, void* recv, size_t bytes) {
  uint64_t n = bytes;
  auto closed = [&] {
    return Status::system_error("out-of-band channel to " + relay_ + " closed or timed out");
  };
  if (!write_full(fd_, &n, sizeof n) || !write_full(fd_, send, bytes)) return closed();
  uint64_t got = 0;
  if (!read_full(fd_, &got, sizeof got)) return closed();
  if (got == kPeerLost) {
    int32_t who = -1;
    (void)read_full(fd_, &who, sizeof who);
    return Status::system_error("allgather failed: rank " + std::to_string(who) + " exited");
  }
  if (got == kRelayFailed) {
    uint32_t len = 0;
    std::string text = "(no reason given)";
    if (read_full(fd_, &len, sizeof len) && len <= 4096) {
      text.assign(len, '\0');
      if (!read_full(fd_, text.data(), len)) text = "(reason cut off)";
    }
    return Status::system_error("allgather failed: " + text);
  }
  if (got != bytes * static_cast<uint64_t>(nranks_))
    return Status::system_error("allgather size mismatch across ranks");
  if (!read_full(fd_, recv, got)) return closed();
  return {};
}

Status OobChannel::barrier() {
  uint8_t b = 0;
  std::vector<uint8_t> all(static_cast<size_t>(nranks_));
  return allgather(&b, all.data(), 1);
}

namespace {

// Forks `nranks` children; child r runs child(r, fd) with its end of a socketpair and exits with
// its return value.
Status spawn(int nranks, const std::function<int(int, int)>& child, std::vector<int>* fds,
             std::vector<pid_t>* pids) {
  fds->assign(nranks, -1);
  pids->assign(nranks, -1);
  for (int r = 0; r < nranks; ++r) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      return Status::system_error(std::string("socketpair: ") + strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return Status::system_error(std::string("fork: ") + strerror(errno));
    if (pid == 0) {
      g_launch_rank = r;
      ::close(sv[0]);
      for (int k = 0; k < r; ++k) ::close((*fds)[k]);
      int rc = child(r, sv[1]);
      fflush(stdout);
      fflush(stderr);
      _exit(rc);
    }
    ::close(sv[1]);
    (*fds)[r] = sv[0];
    (*pids)[r] = pid;
  }
  return {};
}

LaunchResult relay(int nranks, std::vector<int>& fds, std::vector<pid_t>& pids, int timeout_s);

}  // namespace

LaunchResult launch_fork(int nranks, const std::function<int(OobChannel&)>& fn, int timeout_s) {
  LaunchResult res;
  std::vector<int> fds;
  std::vector<pid_t> pids;
  Status s = spawn(
      nranks,
      [&](int r, int fd) {
        OobChannel oob(r, nranks, fd);
        return fn(oob);
      },
      &fds, &pids);
  if (!s.ok()) {
    res.report = s.message();
    return res;
  }
  return relay(nranks, fds, pids, timeout_s);
}

LaunchResult launch_exec(int nranks, char* const* argv, int timeout_s) {
  LaunchResult res;
  std::vector<int> fds;
  std::vector<pid_t> pids;
  Status s = spawn(
      nranks,
      [&](int r, int fd) {
        // The channel survives exec: clear close-on-exec on this one fd only.
        int flags = fcntl(fd, F_GETFD);
        if (flags >= 0) fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
        setenv("MOEFABRIC_RANK", std::to_string(r).c_str(), 1);
        setenv("MOEFABRIC_NRANKS", std::to_string(nranks).c_str(), 1);
        setenv("MOEFABRIC_OOB_FD", std::to_string(fd).c_str(), 1);
        execvp(argv[0], argv);
        fprintf(stderr, "moefabric-run: rank %d: cannot run %s: %s\n", r, argv[0], strerror(errno));
        return 127;
      },
      &fds, &pids);
  if (!s.ok()) {
    res.report = s.message();
    return res;
  }
  return relay(nranks, fds, pids, timeout_s);
}

Status oob_from_env(std::unique_ptr<OobChannel>* out) {
  out->reset();
  const char* r = getenv("MOEFABRIC_RANK");
  const char* n = getenv("MOEFABRIC_NRANKS");
  const char* f = getenv("MOEFABRIC_OOB_FD");
  if (r && n && f) {
    int rank = atoi(r), nranks = atoi(n), fd = atoi(f);
    if (nranks < 1 || rank < 0 || rank >= nranks || fd < 0) return {};
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    *out = std::make_unique<OobChannel>(rank, nranks, fd);
    return {};
  }
  RendezvousSpec spec;
  bool found = false;
  MF_CHECK(rendezvous_from_env(&spec, &found));
  if (!found) return {};
  return rendezvous_open(spec, out);
}

std::unique_ptr<OobChannel> oob_from_env_or_exit() {
  std::unique_ptr<OobChannel> oob;
  if (Status s = oob_from_env(&oob); !s.ok()) {
    fprintf(stderr, "moefabric: cannot join the launch: %s\n", s.message().c_str());
    exit(2);
  }
  return oob;
}

namespace {

LaunchResult relay(int nranks, std::vector<int>& fds, std::vector<pid_t>& pids, int timeout_s) {
  LaunchResult res;
  // Relay allgathers until every rank has exited or the deadline passes.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  std::vector<std::vector<uint8_t>> msg(nranks);
  std::vector<bool> has(nranks, false), open(nranks, true), exited(nranks, false);
  std::vector<int> status(nranks, 0);
  int running = nranks;
  int lost = -1;
  while (running > 0) {
    for (int r = 0; r < nranks; ++r) {
      if (exited[r]) continue;
      int st = 0;
      if (waitpid(pids[r], &st, WNOHANG) == pids[r]) {
        exited[r] = true;
        status[r] = st;
        --running;
      }
    }
    if (running == 0) break;
    if (std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < nranks; ++r)
        if (!exited[r]) {
          kill(pids[r], SIGKILL);
          res.report += "rank " + std::to_string(r) + ": killed at the " + std::to_string(timeout_s) +
                        " s deadline (hung)\n";
        }
      for (int r = 0; r < nranks; ++r)
        if (!exited[r]) waitpid(pids[r], &status[r], 0), exited[r] = true, status[r] = -1;
      break;
    }
    std::vector<pollfd> pfd;
    std::vector<int> who;
    for (int r = 0; r < nranks; ++r)
      if (open[r] && !has[r]) pfd.push_back({fds[r], POLLIN, 0}), who.push_back(r);
    if (!pfd.empty())
      poll(pfd.data(), pfd.size(), 50);
    else
      usleep(20000);
    for (size_t i = 0; i < pfd.size(); ++i) {
      if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int r = who[i];
      uint64_t n = 0;
      if (!read_full(fds[r], &n, sizeof n)) {
        open[r] = false;
        if (lost < 0) lost = r;
        continue;
      }
      msg[r].resize(n);
      if (!read_full(fds[r], msg[r].data(), n)) {
        open[r] = false;
        if (lost < 0) lost = r;
        continue;
      }
      has[r] = true;
    }
    bool all = true;
    for (int r = 0; r < nranks; ++r) all &= has[r];
    if (all) {
      std::vector<uint8_t> cat;
      for (int r = 0; r < nranks; ++r) cat.insert(cat.end(), msg[r].begin(), msg[r].end());
      uint64_t n = cat.size();
      for (int r = 0; r < nranks; ++r) {
        if (open[r]) (void)(write_full(fds[r], &n, sizeof n) && write_full(fds[r], cat.data(), n));
        has[r] = false;
      }
    } else if (lost >= 0) {
      // A rank is gone: fail everyone waiting in a collective instead of leaving them hanging.
      for (int r = 0; r < nranks; ++r)
        if (has[r] && open[r]) {
          uint64_t n = kPeerLost;
          int32_t w = lost;
          (void)(write_full(fds[r], &n, sizeof n) && write_full(fds[r], &w, sizeof w));
          has[r] = false;
        }
    }
  }
  for (int r = 0; r < nranks; ++r) ::close(fds[r]);
  res.ok = true;
  for (int r = 0; r < nranks; ++r) {
    int st = status[r];
    if (st == -1) {
      res.ok = false;
      continue;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) continue;
    res.ok = false;
    if (WIFEXITED(st))
      res.report += "rank " + std::to_string(r) + ": exit code " + std::to_string(WEXITSTATUS(st)) + "\n";
    else if (WIFSIGNALED(st))
      res.report += "rank " + std::to_string(r) + ": killed by signal " + std::to_string(WTERMSIG(st)) + "\n";
  }
  return res;
}

}  // namespace
}  // namespace moefabric
