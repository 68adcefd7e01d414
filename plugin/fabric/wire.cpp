#include "plugin/fabric/wire.h"

namespace moefabric::fabric::wire {

const char* parse_check(const void* buf, size_t len, MsgHeader* hdr) {
  if (len < sizeof(MsgHeader)) return "message shorter than its header";
  std::memcpy(hdr, buf, sizeof *hdr);
  if (hdr->magic != kMagic) return "bad magic";
  if (hdr->version != kVersion) return "unsupported protocol version";
  if (hdr->payload != len - sizeof(MsgHeader)) return "payload length does not match message length";
  const auto* payload = static_cast<const uint8_t*>(buf) + sizeof(MsgHeader);
  switch (static_cast<MsgType>(hdr->type)) {
    case MsgType::kConnect: {
      if (hdr->payload != sizeof(ConnectMsg)) return "bad connect length";
      ConnectMsg m;
      std::memcpy(&m, payload, sizeof m);
      if (m.nrails < 1 || m.nrails > kMaxRails) return "connect rail count out of range";
      for (uint32_t r = 0; r < m.nrails; ++r)
        if (m.rails[r].len == 0 || m.rails[r].len > kMaxAddrLen) return "bad address length";
      return nullptr;
    }
    case MsgType::kConnectAck: {
      if (hdr->payload != sizeof(ConnectAckMsg)) return "bad connect-ack length";
      ConnectAckMsg m;
      std::memcpy(&m, payload, sizeof m);
      if (m.status != 0) return nullptr;  // a refusal carries no addresses
      if (m.nrails < 1 || m.nrails > kMaxRails) return "connect-ack rail count out of range";
      for (uint32_t r = 1; r < m.nrails; ++r)
        if (m.rails[r].len == 0 || m.rails[r].len > kMaxAddrLen) return "bad address length";
      return nullptr;
    }
    case MsgType::kCtrl: {
      if (hdr->payload < offsetof(CtrlMsg, entries) || hdr->payload > sizeof(CtrlMsg))
        return "bad ctrl length";
      CtrlMsg m;
      std::memcpy(&m, payload, hdr->payload);
      if (m.n < 1 || m.n > kMaxRecvs) return "ctrl group width out of range";
      if (hdr->payload != offsetof(CtrlMsg, entries) + m.n * sizeof(CtrlEntry))
        return "ctrl length does not match its width";
      for (int i = 0; i < m.n; ++i)
        if (m.entries[i].mem_type != kMemHost && m.entries[i].mem_type != kMemCuda) return "unknown memory type";
      return nullptr;
    }
    case MsgType::kFin: {
      if (hdr->payload != sizeof(FinMsg)) return "bad fin length";
      FinMsg m;
      std::memcpy(&m, payload, sizeof m);
      if (m.idx >= kMaxRecvs) return "fin index out of range";
      if (m.nseg > kMaxSegments) return "fin segment count out of range";
      return nullptr;
    }
    case MsgType::kEager: {
      if (hdr->payload < sizeof(EagerMsg)) return "bad eager length";
      EagerMsg m;
      std::memcpy(&m, payload, sizeof m);
      if (m.size != hdr->payload - sizeof(EagerMsg)) return "eager size does not match length";
      return nullptr;
    }
    case MsgType::kPing:
    case MsgType::kPong:
      return hdr->payload == sizeof(PingMsg) ? nullptr : "bad ping length";
    case MsgType::kError:
      return hdr->payload == sizeof(ErrorMsg) ? nullptr : "bad error length";
  }
  return "unknown message type";
}

}  // namespace moefabric::fabric::wire
