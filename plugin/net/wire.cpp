#include "plugin/net/wire.h"

namespace moefabric::fabric::wire {

const char* parse(const void* buf, size_t len, Msg* out) {
  Msg& m = *out;
  std::memset(&m, 0, sizeof m);
  if (len < sizeof(MsgHeader)) return "message shorter than its header";
  std::memcpy(&m.h, buf, sizeof m.h);
  const MsgHeader& h = m.h;
  if (h.magic != kMagic) return "bad magic";
  if (h.version != kVersion) return "unsupported protocol version";
  if (h.payload != len - sizeof(MsgHeader)) return "payload length does not match message length";
  const auto* payload = static_cast<const uint8_t*>(buf) + sizeof(MsgHeader);
  // The fixed part of each type, copied once; only the copy is checked and used.
  auto take = [&](void* dst, size_t want) {
    if (h.payload != want) return false;
    std::memcpy(dst, payload, want);
    return true;
  };
  switch (m.type()) {
    case MsgType::kConnect: {
      if (!take(&m.body.connect, sizeof(ConnectMsg))) return "bad connect length";
      const ConnectMsg& c = m.body.connect;
      if (c.nrails < 1 || c.nrails > kMaxRails) return "connect rail count out of range";
      for (uint32_t r = 0; r < c.nrails; ++r)
        if (c.rails[r].len == 0 || c.rails[r].len > kMaxAddrLen) return "bad address length";
      return nullptr;
    }
    case MsgType::kConnectAck: {
      if (!take(&m.body.ack, sizeof(ConnectAckMsg))) return "bad connect-ack length";
      const ConnectAckMsg& a = m.body.ack;
      if (a.status != 0) return nullptr;  // a refusal carries no addresses
      if (a.nrails < 1 || a.nrails > kMaxRails) return "connect-ack rail count out of range";
      for (uint32_t r = 1; r < a.nrails; ++r)
        if (a.rails[r].len == 0 || a.rails[r].len > kMaxAddrLen) return "bad address length";
      return nullptr;
    }
    case MsgType::kCtrl: {
      if (h.payload < offsetof(CtrlMsg, entries) || h.payload > sizeof(CtrlMsg)) return "bad ctrl length";
      std::memcpy(&m.body.ctrl, payload, h.payload);
      const CtrlMsg& c = m.body.ctrl;
      if (c.n < 1 || c.n > kMaxRecvs) return "ctrl group width out of range";
      if (h.payload != offsetof(CtrlMsg, entries) + c.n * sizeof(CtrlEntry))
        return "ctrl length does not match its width";
      for (int i = 0; i < c.n; ++i)
        if (c.entries[i].mem_type != kMemHost && c.entries[i].mem_type != kMemCuda)
          return "unknown memory type";
      return nullptr;
    }
    case MsgType::kFin: {
      if (!take(&m.body.fin, sizeof(FinMsg))) return "bad fin length";
      if (m.body.fin.idx >= kMaxRecvs) return "fin index out of range";
      if (m.body.fin.nseg > kMaxSegments) return "fin segment count out of range";
      return nullptr;
    }
    case MsgType::kEager: {
      if (h.payload < sizeof(EagerMsg)) return "bad eager length";
      std::memcpy(&m.body.eager, payload, sizeof(EagerMsg));
      if (m.body.eager.size != h.payload - sizeof(EagerMsg)) return "eager size does not match length";
      m.eager_data = payload + sizeof(EagerMsg);
      return nullptr;
    }
    case MsgType::kPing:
    case MsgType::kPong:
      return take(&m.body.ping, sizeof(PingMsg)) ? nullptr : "bad ping length";
    case MsgType::kError:
      if (!take(&m.body.error, sizeof(ErrorMsg))) return "bad error length";
      m.body.error.text[sizeof m.body.error.text - 1] = '\0';
      return nullptr;
  }
  return "unknown message type";
}

}  // namespace moefabric::fabric::wire
