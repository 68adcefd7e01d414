#include "common/rendezvous.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace moefabric {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x4d46525a;  // "MFRZ"
constexpr uint32_t kVersion = 1;
constexpr uint64_t kRelayFailed = ~0ull - 1;  // as in launch.cpp: u32 length and the text follow
constexpr int kMaxPending = 64;               // connections that have not said who they are

struct Hello {
  uint32_t magic, version;
  int32_t rank, nranks;
};

std::string env(const char* name) {
  const char* v = getenv(name);
  return v ? v : "";
}

bool parse_int(const std::string& s, long lo, long hi, int* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long v = strtol(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return false;
  *out = static_cast<int>(v);
  return true;
}

int ms_until(Clock::time_point t) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(ms, 0, 1000));
}

// Whole buffers over a non-blocking socket, bounded by `deadline`.
bool send_all(int fd, const void* p, size_t n, Clock::time_point deadline) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    ssize_t w = ::send(fd, b, n, MSG_NOSIGNAL);
    if (w > 0) {
      b += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
    if (Clock::now() >= deadline) return false;
    pollfd pfd{fd, POLLOUT, 0};
    (void)poll(&pfd, 1, ms_until(deadline));
  }
  return true;
}

bool recv_all(int fd, void* p, size_t n, Clock::time_point deadline) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    ssize_t r = ::recv(fd, b, n, 0);
    if (r > 0) {
      b += r;
      n -= static_cast<size_t>(r);
      continue;
    }
    if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return false;
    if (Clock::now() >= deadline) return false;
    pollfd pfd{fd, POLLIN, 0};
    (void)poll(&pfd, 1, ms_until(deadline));
  }
  return true;
}

void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

bool send_failure(int fd, const std::string& text, Clock::time_point deadline) {
  uint64_t code = kRelayFailed;
  uint32_t len = static_cast<uint32_t>(std::min<size_t>(text.size(), 4096));
  return send_all(fd, &code, sizeof code, deadline) && send_all(fd, &len, sizeof len, deadline) &&
         send_all(fd, text.data(), len, deadline);
}

std::string peer_name(const sockaddr_storage& ss) {
  char host[NI_MAXHOST] = "?", port[NI_MAXSERV] = "?";
  getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof ss, host, sizeof host, port, sizeof port,
              NI_NUMERICHOST | NI_NUMERICSERV);
  std::string h = host;
  if (h.rfind("::ffff:", 0) == 0) h = h.substr(7);
  return h + ":" + port;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  const size_t shown = std::min<size_t>(ranks.size(), 16);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + std::to_string(ranks[i]);
  if (ranks.size() > shown) s += " and " + std::to_string(ranks.size() - shown) + " more";
  return (ranks.size() == 1 ? "rank " : "ranks ") + s;
}

// Rank 0's relay: accepts the ranks, then relays allgathers until every rank has left or the
// owner stops it. Peers are untrusted: sizes are bounded, ranks checked, strays rejected.
class Relay {
 public:
  ~Relay() { stop(); }

  Status listen_on(int port) {
    for (int family : {AF_INET6, AF_INET}) {
      int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) continue;
      int one = 1, zero = 0;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      sockaddr_storage ss{};
      socklen_t len;
      if (family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_addr = in6addr_any;
        a->sin6_port = htons(static_cast<uint16_t>(port));
        len = sizeof *a;
      } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        a->sin_port = htons(static_cast<uint16_t>(port));
        len = sizeof *a;
      }
      if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0 && ::listen(fd, 1024) == 0) {
        set_nonblocking(fd);
        lfd_ = fd;
        return {};
      }
      int e = errno;
      ::close(fd);
      if (family == AF_INET6 && (e == EAFNOSUPPORT || e == EADDRNOTAVAIL)) continue;
      return Status::system_error(
          "rank 0 cannot listen on port " + std::to_string(port) + ": " + strerror(e) +
          (e == EADDRINUSE
               ? " (another job or torchrun's own store holds it: set MOEFABRIC_MASTER_PORT to a free "
                 "port on every rank)"
               : ""));
    }
    return Status::system_error("rank 0 cannot create a listening socket: " + std::string(strerror(errno)));
  }

  void start(int nranks, int timeout_s, std::string where) {
    nranks_ = nranks;
    timeout_ = std::chrono::seconds(timeout_s);
    where_ = std::move(where);
    if (pipe2(wake_, O_CLOEXEC) != 0) wake_[0] = wake_[1] = -1;
    thread_ = std::thread([this] { run(); });
  }

  void stop() {
    if (thread_.joinable()) {
      char c = 0;
      if (wake_[1] >= 0) (void)!::write(wake_[1], &c, 1);
      thread_.join();
    }
    for (int* fd : {&lfd_, &wake_[0], &wake_[1]})
      if (*fd >= 0) ::close(*fd), *fd = -1;
  }

 private:
  enum class Stage { kHello, kHeader, kBody, kWaiting, kGone };
  struct Conn {
    int fd = -1;
    int rank = -1;
    std::string peer;
    Stage stage = Stage::kHello;
    std::vector<uint8_t> buf;
    size_t got = 0;
    Clock::time_point since;
  };

  Clock::time_point deadline() const { return Clock::now() + timeout_; }

  void drop(Conn& c) {
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
    c.stage = Stage::kGone;
  }

  // Once failed, every rank that asks (and every one waiting) gets the reason.
  void fail(const std::string& text) {
    if (failure_.empty()) failure_ = text;
    for (Conn& c : conns_)
      if (c.rank >= 0 && c.stage == Stage::kWaiting) {
        if (!send_failure(c.fd, failure_, Clock::now() + std::chrono::seconds(10))) drop(c);
        if (c.stage != Stage::kGone) c.stage = Stage::kHeader, c.got = 0, c.buf.assign(8, 0);
      }
  }

  void accept_new() {
    for (;;) {
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      int fd = ::accept4(lfd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) return;
      set_nodelay(fd);
      int pending = 0;
      for (const Conn& c : conns_) pending += c.rank < 0 && c.stage != Stage::kGone;
      if (pending >= kMaxPending) {
        ::close(fd);
        continue;
      }
      Conn c;
      c.fd = fd;
      c.peer = peer_name(ss);
      c.buf.assign(sizeof(Hello), 0);
      c.since = Clock::now();
      conns_.push_back(std::move(c));
    }
  }

  void on_hello(Conn& c) {
    Hello h;
    memcpy(&h, c.buf.data(), sizeof h);
    std::string bad;
    if (h.magic != kMagic)
      bad = "not a moefabric rank (bad magic)";
    else if (h.version != kVersion)
      bad = "rendezvous protocol version " + std::to_string(h.version) + ", rank 0 speaks " +
            std::to_string(kVersion);
    else if (h.nranks != nranks_)
      bad = "it says the job has " + std::to_string(h.nranks) + " ranks, rank 0 says " +
            std::to_string(nranks_);
    else if (h.rank < 0 || h.rank >= nranks_)
      bad = "rank " + std::to_string(h.rank) + " is out of range [0, " + std::to_string(nranks_) + ")";
    else if (joined_ == nranks_)
      bad = "all " + std::to_string(nranks_) + " ranks have already joined";
    else
      for (const Conn& o : conns_)
        if (o.rank == h.rank) bad = "rank " + std::to_string(h.rank) + " has already joined from " + o.peer;
    if (!bad.empty()) {
      fprintf(stderr, "moefabric rendezvous: rejected %s: %s\n", c.peer.c_str(), bad.c_str());
      (void)send_failure(c.fd, "rank 0's rendezvous rejected this process: " + bad,
                         Clock::now() + std::chrono::seconds(2));
      drop(c);
      return;
    }
    c.rank = h.rank;
    ++joined_;
    c.stage = Stage::kWaiting;  // until everyone has joined: the welcome is the first reply
    if (!failure_.empty()) fail(failure_);
  }

  // All ranks are waiting with their messages (the welcome round has none): reply to everyone,
  // rank 0 last, so that rank 0 cannot leave before the others have their answer.
  void complete_round() {
    std::vector<Conn*> by_rank(nranks_, nullptr);
    for (Conn& c : conns_)
      if (c.rank >= 0 && c.stage == Stage::kWaiting) by_rank[c.rank] = &c;
    std::vector<uint8_t> cat;
    if (round_ > 0) {
      const size_t n = by_rank[0]->buf.size();
      for (int r = 1; r < nranks_; ++r)
        if (by_rank[r]->buf.size() != n) {
          fail("allgather #" + std::to_string(round_) + " size mismatch: rank 0 gave " + std::to_string(n) +
               " bytes, rank " + std::to_string(r) + " gave " + std::to_string(by_rank[r]->buf.size()));
          return;
        }
      cat.reserve(n * nranks_);
      for (Conn* c : by_rank) cat.insert(cat.end(), c->buf.begin(), c->buf.end());
    }
    uint64_t len = cat.size();
    for (int i = nranks_ - 1; i >= 0; --i) {
      Conn* c = by_rank[(i + 1) % nranks_];  // ranks 1..R-1, then 0
      if (!send_all(c->fd, &len, sizeof len, deadline()) ||
          !send_all(c->fd, cat.data(), cat.size(), deadline()))
        drop(*c);
      else
        c->stage = Stage::kHeader, c->got = 0, c->buf.assign(8, 0);
    }
    ++round_;
  }

  // Reads what `c` has sent; false when it is gone.
  bool read_from(Conn& c) {
    while (c.stage == Stage::kHello || c.stage == Stage::kHeader || c.stage == Stage::kBody) {
      if (c.got == c.buf.size()) {
        if (c.stage == Stage::kHello) {
          on_hello(c);
          return c.stage != Stage::kGone;
        }
        if (c.stage == Stage::kHeader) {
          uint64_t n;
          memcpy(&n, c.buf.data(), sizeof n);
          if (n > kRendezvousMaxBytes) {
            fail("rank " + std::to_string(c.rank) + " sent a " + std::to_string(n) +
                 "-byte allgather contribution (limit " + std::to_string(kRendezvousMaxBytes) + ")");
            return false;
          }
          c.stage = Stage::kBody, c.got = 0, c.buf.assign(n, 0);
          continue;
        }
        c.stage = Stage::kWaiting;
        if (!failure_.empty()) fail(failure_);
        if (round_start_ == Clock::time_point{}) round_start_ = Clock::now();
        return true;
      }
      ssize_t r = ::recv(c.fd, c.buf.data() + c.got, c.buf.size() - c.got, 0);
      if (r > 0) {
        c.got += static_cast<size_t>(r);
        continue;
      }
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return true;
      return false;
    }
    return true;
  }

  void on_gone(Conn& c) {
    const int rank = c.rank;
    const bool waiting = c.stage == Stage::kWaiting;
    drop(c);
    if (rank < 0) return;
    ++left_;
    // A rank that leaves between allgathers is fine (the job may be over); one that leaves while
    // the job has not fully joined, or while others wait in an allgather, fails them.
    bool others_waiting = false;
    for (const Conn& o : conns_) others_waiting |= o.rank >= 0 && o.stage == Stage::kWaiting;
    if (joined_ < nranks_ || others_waiting || waiting)
      fail("rank " + std::to_string(rank) + " (" + c.peer + ") disconnected" +
           (round_ == 0 ? " before every rank had joined" : " during allgather #" + std::to_string(round_)));
    else if (failure_.empty())
      failure_ = "rank " + std::to_string(rank) + " (" + c.peer + ") disconnected before allgather #" +
                 std::to_string(round_);
  }

  void check_deadlines() {
    const auto now = Clock::now();
    if (round_ == 0 && joined_ < nranks_ && now - start_ > timeout_) {
      std::vector<int> missing;
      for (int r = 0; r < nranks_; ++r)
        if (std::none_of(conns_.begin(), conns_.end(), [&](const Conn& c) { return c.rank == r; }))
          missing.push_back(r);
      fail(rank_list(missing) + " of " + std::to_string(nranks_) + " did not connect to " + where_ +
           " within " + std::to_string(timeout_.count()) + " s");
      timed_out_ = true;
      return;
    }
    if (round_ > 0 && round_start_ != Clock::time_point{} && now - round_start_ > timeout_ &&
        failure_.empty()) {
      std::vector<int> late;
      for (const Conn& c : conns_)
        if (c.rank >= 0 && c.stage != Stage::kWaiting) late.push_back(c.rank);
      std::sort(late.begin(), late.end());
      fail(rank_list(late) + " did not reach allgather #" + std::to_string(round_) + " within " +
           std::to_string(timeout_.count()) + " s of the first rank");
    }
    for (Conn& c : conns_)  // strays that never say who they are
      if (c.rank < 0 && c.stage != Stage::kGone && now - c.since > std::chrono::seconds(10)) drop(c);
  }

  void run() {
    start_ = Clock::now();
    for (;;) {
      conns_.erase(std::remove_if(conns_.begin(), conns_.end(),
                                  [](const Conn& c) { return c.stage == Stage::kGone && c.rank < 0; }),
                   conns_.end());
      std::vector<pollfd> pfd{{wake_[0], POLLIN, 0}, {lfd_, POLLIN, 0}};
      std::vector<size_t> who;
      for (size_t i = 0; i < conns_.size(); ++i)
        if (conns_[i].stage != Stage::kGone) pfd.push_back({conns_[i].fd, POLLIN, 0}), who.push_back(i);
      (void)poll(pfd.data(), pfd.size(), 200);
      if (pfd[0].revents) return;  // the owner stops us
      if (pfd[1].revents & POLLIN) accept_new();
      for (size_t i = 0; i < who.size(); ++i) {
        Conn& c = conns_[who[i]];
        if (!(pfd[i + 2].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        if (c.stage == Stage::kWaiting) {  // nothing more is expected from it: an EOF means it left
          char b;
          ssize_t r = ::recv(c.fd, &b, 1, MSG_PEEK);
          if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) on_gone(c);
          continue;
        }
        if (!read_from(c)) on_gone(c);
      }
      if (failure_.empty() && (round_ > 0 || joined_ == nranks_)) {
        int waiting = 0;
        for (const Conn& c : conns_) waiting += c.rank >= 0 && c.stage == Stage::kWaiting;
        if (waiting == nranks_) {
          complete_round();
          round_start_ = {};
        }
      }
      check_deadlines();
      if (timed_out_ || (joined_ == nranks_ && left_ == nranks_)) return;
    }
  }

  int lfd_ = -1, wake_[2] = {-1, -1};
  std::thread thread_;
  int nranks_ = 0, joined_ = 0, left_ = 0;
  uint64_t round_ = 0;  // 0: the welcome (everyone joined); then allgather #1, #2, ...
  std::chrono::seconds timeout_{300};
  std::string where_, failure_;
  std::vector<Conn> conns_;
  Clock::time_point start_, round_start_;
  bool timed_out_ = false;
};

// What a rendezvous channel keeps alive: its socket and, on rank 0, the relay.
struct Held {
  int fd = -1;
  std::unique_ptr<Relay> relay;
  ~Held() {
    if (fd >= 0) ::close(fd);  // the relay sees rank 0 leave, then stops with it
    relay.reset();
  }
};

// Connects *fd to host:port, retrying refused and unreachable attempts until the deadline.
Status connect_retrying(const std::string& host, int port, Clock::time_point deadline, int* fd_out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int gai = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (gai != 0)
    return Status::system_error("cannot resolve rank 0's host \"" + host + "\": " + gai_strerror(gai));
  std::string last = "no address";
  for (;;) {
    for (addrinfo* a = res; a; a = a->ai_next) {
      int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
      if (fd < 0) continue;
      int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
      if (rc != 0 && errno == EINPROGRESS) {
        pollfd pfd{fd, POLLOUT, 0};
        rc = poll(&pfd, 1, std::max(1, std::min(ms_until(deadline), 1000))) == 1 ? 0 : -1;
        int e = ETIMEDOUT;
        socklen_t el = sizeof e;
        if (rc == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e != 0) rc = -1, errno = e;
        if (rc != 0 && e == ETIMEDOUT) errno = ETIMEDOUT;
      }
      if (rc == 0) {
        freeaddrinfo(res);
        set_nodelay(fd);
        *fd_out = fd;
        return {};
      }
      last = strerror(errno);
      ::close(fd);
    }
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  freeaddrinfo(res);
  return Status::system_error("cannot connect to rank 0's rendezvous at " + host + ":" +
                              std::to_string(port) + ": " + last);
}

}  // namespace

Status rendezvous_from_env(RendezvousSpec* spec, bool* found) {
  *found = false;
  struct Source {
    const char *name, *rank, *size, *local_size;
  };
  const Source sources[] = {
      {"MOEFABRIC_RANK/MOEFABRIC_NRANKS", "MOEFABRIC_RANK", "MOEFABRIC_NRANKS", nullptr},
      {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"},
      {"OpenMPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"},
  };
  const Source* src = nullptr;
  for (const Source& s : sources)
    if (getenv(s.rank) || getenv(s.size)) {
      src = &s;
      break;
    }
  if (!src) return {};
  auto fail = [&](const std::string& why) {
    return Status::invalid_usage(why + " (" + src->name + " launch)");
  };
  RendezvousSpec s;
  s.source = src->name;
  if (!parse_int(env(src->size), 1, 1 << 20, &s.nranks))
    return fail(std::string(src->size) + "=\"" + env(src->size) + "\" is not a rank count");
  if (!parse_int(env(src->rank), 0, s.nranks - 1, &s.rank))
    return fail(std::string(src->rank) + "=\"" + env(src->rank) + "\" is not a rank below " +
                std::to_string(s.nranks));
  s.addr = env("MOEFABRIC_MASTER_ADDR");
  if (s.addr.empty()) s.addr = env("MASTER_ADDR");
  int local = 0;
  if (s.addr.empty() &&
      (s.nranks == 1 ||
       (src->local_size && parse_int(env(src->local_size), 1, 1 << 20, &local) && local == s.nranks)))
    s.addr = "127.0.0.1";  // every rank on this host
  if (s.addr.empty())
    return fail("no rendezvous address: set MOEFABRIC_MASTER_ADDR (or MASTER_ADDR) to rank 0's host");
  const std::string mport = env("MOEFABRIC_MASTER_PORT"), tport = env("MASTER_PORT");
  if (!mport.empty()) {
    if (!parse_int(mport, 1, 65535, &s.port))
      return fail("MOEFABRIC_MASTER_PORT=\"" + mport + "\" is not a port");
  } else if (!tport.empty()) {
    if (!parse_int(tport, 1, 65534, &s.port)) return fail("MASTER_PORT=\"" + tport + "\" is not a port");
    s.port += 1;  // torchrun's own store holds MASTER_PORT itself
  } else {
    s.port = 29501;
  }
  const std::string t = env("MOEFABRIC_BOOTSTRAP_TIMEOUT_S");
  if (!t.empty() && !parse_int(t, 1, 86400, &s.timeout_s))
    return fail("MOEFABRIC_BOOTSTRAP_TIMEOUT_S=\"" + t + "\" is not a number of seconds in 1..86400");
  *spec = s;
  *found = true;
  return {};
}

int local_rank_from_env() {
  int v = -1;
  for (const char* name : {"MOEFABRIC_LOCAL_RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"})
    if (parse_int(env(name), 0, 1 << 20, &v)) return v;
  return -1;
}

Status rendezvous_open(const RendezvousSpec& spec, std::unique_ptr<OobChannel>* out) {
  const std::string where = "rank 0's rendezvous at " + spec.addr + ":" + std::to_string(spec.port);
  auto held = std::make_shared<Held>();
  if (spec.rank == 0) {
    held->relay = std::make_unique<Relay>();
    MF_CHECK(held->relay->listen_on(spec.port));
    held->relay->start(spec.nranks, spec.timeout_s, where);
  }
  const auto deadline = Clock::now() + std::chrono::seconds(spec.timeout_s);
  Status connected =
      connect_retrying(spec.rank == 0 ? "127.0.0.1" : spec.addr, spec.port, deadline, &held->fd);
  if (!connected.ok()) {
    if (spec.rank != 0)
      return Status(connected.code(),
                    connected.message() + " (is rank 0 running, and is " + spec.addr + " its address?)");
    return connected;
  }
  Hello h{kMagic, kVersion, spec.rank, spec.nranks};
  uint64_t welcome = ~0ull;
  // The relay answers once every rank has joined, or says who did not within its timeout.
  const auto reply_by = Clock::now() + std::chrono::seconds(spec.timeout_s + 15);
  if (!send_all(held->fd, &h, sizeof h, reply_by) ||
      !recv_all(held->fd, &welcome, sizeof welcome, reply_by)) {
    return Status::system_error("no answer from " + where + " within " + std::to_string(spec.timeout_s + 15) +
                                " s");
  }
  if (welcome != 0) {
    uint32_t len = 0;
    std::string text = "an unexpected reply";
    if (welcome == kRelayFailed && recv_all(held->fd, &len, sizeof len, reply_by) && len <= 4096) {
      text.assign(len, '\0');
      if (!recv_all(held->fd, text.data(), len, reply_by)) text = "(reason cut off)";
    }
    return Status::system_error(where + ": " + text);
  }
  // The channel's reads and writes block; the relay bounds every allgather, these bound the relay.
  const int fl = fcntl(held->fd, F_GETFL);
  fcntl(held->fd, F_SETFL, fl & ~O_NONBLOCK);
  timeval tv{spec.timeout_s + 30, 0};
  setsockopt(held->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(held->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const int fd = held->fd;
  *out = std::make_unique<OobChannel>(spec.rank, spec.nranks, fd, where + " (" + spec.source + ")", held);
  return {};
}

}  // namespace moefabric
