// Operations the provider refused with -FI_EAGAIN, reposted oldest first by the next progress
// call: the one retry queue of the net plugin's devices and the MoE RMA endpoints. Posting
// order per peer is kept: while a peer has a refused operation waiting, later ones for it queue
// behind (a split write's immediate must not overtake its payload); other peers go on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <utility>

#include <rdma/fi_errno.h>

namespace moefabric::fabric {

template <class Op>
class RetryQueue {
 public:
  // An operation for `peer` must queue now rather than be posted.
  bool holds(uint64_t peer) const { return peers_.count(peer) != 0; }
  void push(Op* op, uint64_t peer) {
    q_.emplace_back(op, peer);
    ++peers_[peer];
  }
  bool empty() const { return q_.empty(); }
  size_t size() const { return q_.size(); }
  // Reposts every queued operation, oldest first. post(op) returns the provider's result:
  // -FI_EAGAIN queues it again (and, behind it, the rest of that peer's); anything else means
  // the caller has dealt with the operation.
  template <class Post>
  void retry(Post&& post) {
    if (q_.empty()) return;
    scratch_.swap(q_);
    peers_.clear();
    for (auto& [op, peer] : scratch_)
      if (holds(peer) || post(op) == -FI_EAGAIN) push(op, peer);
    scratch_.clear();
  }

 private:
  std::deque<std::pair<Op*, uint64_t>> q_, scratch_;
  std::unordered_map<uint64_t, int> peers_;  // queued operations per peer
};

}  // namespace moefabric::fabric
