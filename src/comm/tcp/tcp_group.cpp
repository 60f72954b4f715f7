#include "comm/tcp/tcp_group.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>

#include "comm/collectives.h"
#include "comm/tcp/acceptor.h"
#include "comm/tcp/connector.h"
#include "comm/tcp/socket_io.h"
#include "comm/tcp/wire.h"
#include "core/dtype.h"

namespace shardlm::comm {

int tcp_listen(const std::string& host, int port, int* bound_port) { return tcp::listen_socket(host, port, bound_port); }

namespace tcp {
namespace {

constexpr std::string_view kReportedBy = " (reported by rank ";

// One direction of traffic with one peer: out links carry this rank's messages to the peer, in
// links the peer's to this rank. Only goodbye and abort frames travel the other way.
struct Link {
  int fd = -1;
  uint32_t seq = 0;        // of the next data frame in the link's direction
  bool mid_frame = false;  // a frame is partly through: nothing else may be written into it
};

// A message being sent or received, advanced by non-blocking I/O until done.
struct Transfer {
  int peer = 0;
  bool sending = false;
  Link* link = nullptr;
  uint8_t header[kFrameHeaderBytes] = {};
  uint8_t* data = nullptr;
  size_t bytes = 0;
  size_t done = 0;  // header and payload bytes moved so far
  bool header_checked = false;
  bool finished = false;
};

inline std::string_view text_of(const uint8_t* p, size_t n) { return {reinterpret_cast<const char*>(p), n}; }

// dst[i] += src[i]. Eight at a time: -O2 vectorizes a fixed-length body (SSE2 is the baseline),
// not a loop of unknown length. Each element still gets exactly one addition, so the order of
// additions, and the bits, are those of the plain loop.
inline void add_into(float* __restrict dst, const float* __restrict src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t j = 0; j < 8; ++j) dst[i + j] += src[i + j];
  for (; i < n; ++i) dst[i] += src[i];
}

inline float widen(float x) { return x; }
inline float widen(uint16_t bf16) { return bf16_to_f32(bf16); }

template <class T>
void add_into(float* __restrict dst, const T* __restrict src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (size_t j = 0; j < 8; ++j) dst[i + j] += widen(src[i + j]);
  for (; i < n; ++i) dst[i] += widen(src[i]);
}

}  // namespace

class TcpGroup final : public Group {
 public:
  explicit TcpGroup(const TcpGroupOptions& options);
  ~TcpGroup() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return mesh_ ? "tcp-mesh" : "tcp-ring"; }

  void send(int peer, const void* data, size_t bytes) override;
  void recv(int peer, void* data, size_t bytes) override;
  void send_recv(int to, const void* send_data, size_t send_bytes, int from, void* recv_data,
                 size_t recv_bytes) override;
  void all_reduce_sum(float* data, size_t count) override;
  void all_reduce_sum_bf16(uint16_t* data, size_t count) override;
  void all_gather(const void* mine, size_t bytes, void* all) override;
  void barrier() override;
  std::unique_ptr<Group> split(int color, int key) override { return split_by_color(*this, color, key); }
  CommStats stats() const override { return stats_; }
  void reset_stats() override { stats_ = {}; }

 private:
  // Times the outermost call only: collectives call send_recv of this same group.
  struct CallScope {
    TcpGroup& group;
    Clock::time_point start;
    explicit CallScope(TcpGroup& g) : group(g), start(Clock::now()) {
      if (!group.broken_.empty()) throw CommError(group.broken_);
      ++group.call_depth_;
    }
    ~CallScope() {
      if (--group.call_depth_ == 0) group.stats_.seconds += std::chrono::duration<double>(Clock::now() - start).count();
    }
  };

  void form();
  void close_everything();
  std::string who(int peer) const { return fmt::format("rank {} ({})", peer, options_.endpoints[size_t(peer)]); }
  void check_peer(int peer, const char* role) const;
  Link& out_link(int peer);
  Link& in_link(int peer);

  void add_send(int peer, const void* data, size_t bytes);
  void add_recv(int peer, void* data, size_t bytes);
  void run_transfers();
  void advance_send(Transfer& t);
  void advance_recv(Transfer& t);
  void check_header(Transfer& t);
  struct PeerNote {
    enum Kind { nothing, goodbye, abort, corrupted } kind = nothing;
    std::string text;
  };
  PeerNote read_note(int peer, bool incoming);
  [[noreturn]] void peer_lost(int peer, std::string fallback);
  void examine_hangup(int peer, bool incoming);
  [[noreturn]] void fail(std::string message);
  [[noreturn]] void fail_reported(int peer, std::string_view root);
  // Goodbye or abort, best effort and without blocking. On an in link it travels against the
  // data, where nothing else is ever written, so it never lands inside a frame.
  void write_control_frame(Link& link, bool in_link, uint32_t magic, std::string_view payload);

  template <class T>
  void direct_all_reduce(T* data, size_t count);
  void ring_all_reduce(float* data, size_t count, float* incoming);
  // Direct is one hop (every rank sends its whole buffer to every other); the ring takes 2(n-1)
  // hops but sends only 2(n-1)/n of the buffer per rank instead of n-1 buffers.
  bool goes_direct(size_t buffer_bytes) const {
    return mesh_ && buffer_bytes * size_t(size_ - 1) <= options_.mesh_direct_max_bytes;
  }
  void direct_all_gather(const void* mine, size_t bytes, void* all);
  uint8_t* scratch(size_t bytes);

  TcpGroupOptions options_;
  int rank_ = 0;
  int size_ = 0;
  bool mesh_ = false;
  Clock::duration timeout_;
  uint64_t group_id_ = 0;
  uint64_t session_ = 0;
  int listen_fd_ = -1;
  bool owns_listen_fd_ = false;
  std::unique_ptr<Acceptor> acceptor_;
  std::vector<Link> out_, in_;
  std::vector<bool> departed_;  // said goodbye: destroyed its group normally
  std::string broken_;          // set by the first failure; every later call throws it
  CommStats stats_;
  int call_depth_ = 0;
  // Reused by every call so that no message allocates.
  std::vector<Transfer> transfers_;
  std::vector<pollfd> pollfds_;
  std::vector<std::pair<int, bool>> watched_;  // (peer, incoming) of each watch entry in pollfds_
  std::vector<std::pair<int, bool>> hung_up_;  // watched links that reported a hang-up
  std::vector<uint8_t> scratch_;
};

TcpGroup::TcpGroup(const TcpGroupOptions& options)
    : options_(options),
      rank_(options.rank),
      size_(int(options.endpoints.size())),
      mesh_(options.topology == TcpTopology::Mesh),
      timeout_(options.timeout) {
  if (size_ == 0) throw CommError("tcp group: no endpoints given");
  if (rank_ < 0 || rank_ >= size_)
    throw CommError(fmt::format("tcp group: rank {} is outside the {} endpoints", rank_, size_));
  if (options_.secret.empty()) throw CommError("tcp group: the cluster secret is empty (every rank needs the same one)");
  if (options_.timeout <= std::chrono::milliseconds::zero()) throw CommError("tcp group: the timeout must be positive");
  for (int r = 0; r < size_; ++r) parse_endpoint(options_.endpoints[size_t(r)], fmt::format("endpoint of rank {}", r));
  group_id_ = group_id_of(mesh_ ? "mesh" : "ring", options_.endpoints);
  out_.resize(size_t(size_));
  in_.resize(size_t(size_));
  departed_.assign(size_t(size_), false);
  transfers_.reserve(size_t(2 * size_));
  pollfds_.reserve(size_t(4 * size_));
  watched_.reserve(size_t(2 * size_));
  hung_up_.reserve(size_t(2 * size_));
  try {
    if (options_.listen_fd >= 0) {
      listen_fd_ = options_.listen_fd;
    } else {
      Endpoint self = parse_endpoint(options_.endpoints[size_t(rank_)], "own endpoint");
      listen_fd_ = listen_socket(self.host, self.port, nullptr);
      owns_listen_fd_ = true;
    }
    if (size_ > 1) form();
  } catch (...) {
    close_everything();
    throw;
  }
}

TcpGroup::~TcpGroup() {
  if (broken_.empty())
    for (int p = 0; p < size_; ++p) {
      if (departed_[size_t(p)]) continue;
      write_control_frame(out_[size_t(p)], false, kGoodbyeMagic, {});
      write_control_frame(in_[size_t(p)], true, kGoodbyeMagic, {});
    }
  close_everything();
}

void TcpGroup::close_everything() {
  acceptor_.reset();  // joins its thread first: nothing can hand us a socket after this
  for (auto* links : {&out_, &in_})
    for (auto& l : *links) {
      drain_and_close(l.fd);
      l.fd = -1;
    }
  if (owns_listen_fd_ && listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

// Connects to the neighbours (Ring) or everyone (Mesh), waits for them to connect back, then
// agrees on a session id that later connections must carry.
void TcpGroup::form() {
  AcceptorConfig config;
  config.listen_fd = listen_fd_;
  config.rank = rank_;
  config.size = size_;
  config.group_id = group_id_;
  config.secret = options_.secret;
  config.handshake_timeout = options_.timeout;
  acceptor_ = std::make_unique<Acceptor>(std::move(config));

  std::vector<int> peers;
  if (mesh_) {
    for (int p = 0; p < size_; ++p)
      if (p != rank_) peers.push_back(p);
  } else {
    peers.push_back((rank_ + 1) % size_);
    if (size_ > 2) peers.push_back((rank_ + size_ - 1) % size_);
  }
  auto deadline = Clock::now() + timeout_;
  try {
    for (int p : peers) out_link(p);  // session 0: forming
  } catch (const CommError& e) {
    throw CommError(e.what() + acceptor_->refusals());  // what strangers tried may explain it
  }
  for (int p : peers) {
    int fd = acceptor_->take(p, deadline);
    if (fd < 0)
      throw CommError(fmt::format("timed out after {:.1f} s waiting for {} to connect{}",
                                  std::chrono::duration<double>(timeout_).count(), who(p), acceptor_->refusals()));
    in_[size_t(p)].fd = fd;
  }
  uint64_t mine;
  fill_random(&mine, sizeof mine);
  std::vector<uint64_t> all(static_cast<size_t>(size_));
  all_gather(&mine, sizeof mine, all.data());
  Digest d = sha256(all.data(), all.size() * sizeof(uint64_t));
  std::memcpy(&session_, d.data(), sizeof session_);
  session_ |= 1;  // never 0, which means "forming"
  acceptor_->set_session(session_);
  stats_ = {};
}

void TcpGroup::check_peer(int peer, const char* role) const {
  if (peer < 0 || peer >= size_ || peer == rank_)
    throw CommError(fmt::format("tcp group: {} rank {} is not another rank of this group of {} (this is rank {})", role,
                                peer, size_, rank_));
}

Link& TcpGroup::out_link(int peer) {
  Link& l = out_[size_t(peer)];
  if (l.fd >= 0) return l;
  if (departed_[size_t(peer)]) fail(fmt::format("{} has left the group", who(peer)));
  ConnectRequest request;
  request.endpoint = options_.endpoints[size_t(peer)];
  request.from_rank = rank_;
  request.to_rank = peer;
  request.group_size = size_;
  request.group_id = group_id_;
  request.session = session_;
  request.secret = &options_.secret;
  if (session_ == 0) {
    l.fd = connect_to_rank(request, Clock::now() + timeout_);  // forming: the caller cleans up
    return l;
  }
  try {
    l.fd = connect_to_rank(request, Clock::now() + timeout_);
  } catch (const CommError& e) {
    fail(e.what());
  }
  return l;
}

Link& TcpGroup::in_link(int peer) {
  Link& l = in_[size_t(peer)];
  if (l.fd >= 0) return l;
  l.fd = acceptor_->take(peer, Clock::now() + timeout_);
  if (l.fd < 0)
    fail(fmt::format("timed out after {:.1f} s waiting for {} to connect{}",
                     std::chrono::duration<double>(timeout_).count(), who(peer), acceptor_->refusals()));
  return l;
}

void TcpGroup::add_send(int peer, const void* data, size_t bytes) {
  Link& l = out_link(peer);
  if (departed_[size_t(peer)]) fail(fmt::format("{} has left the group", who(peer)));
  Transfer& t = transfers_.emplace_back();
  t.peer = peer;
  t.sending = true;
  t.link = &l;
  t.data = const_cast<uint8_t*>(static_cast<const uint8_t*>(data));
  t.bytes = bytes;
  encode(FrameHeader{kDataMagic, l.seq, bytes}, t.header);
}

void TcpGroup::add_recv(int peer, void* data, size_t bytes) {
  Transfer& t = transfers_.emplace_back();
  t.peer = peer;
  t.link = &in_link(peer);
  t.data = static_cast<uint8_t*>(data);
  t.bytes = bytes;
}

void TcpGroup::advance_send(Transfer& t) {
  const size_t total = kFrameHeaderBytes + t.bytes;
  while (t.done < total) {
    iovec iov[2];
    size_t n = 0;
    if (t.done < kFrameHeaderBytes) iov[n++] = {t.header + t.done, kFrameHeaderBytes - t.done};
    size_t payload_done = t.done > kFrameHeaderBytes ? t.done - kFrameHeaderBytes : 0;
    if (payload_done < t.bytes) iov[n++] = {t.data + payload_done, t.bytes - payload_done};
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = n;
    ssize_t k = ::sendmsg(t.link->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      t.done += size_t(k);
      t.link->mid_frame = true;
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN)
      peer_lost(t.peer, fmt::format("{} closed the connection", who(t.peer)));
    fail(fmt::format("sending to {} failed: {}", who(t.peer), std::strerror(errno)));
  }
  t.finished = true;
  t.link->mid_frame = false;
  ++t.link->seq;
  stats_.bytes_sent += t.bytes;
  ++stats_.messages_sent;
}

void TcpGroup::advance_recv(Transfer& t) {
  const size_t total = kFrameHeaderBytes + t.bytes;
  while (t.done < total) {
    iovec iov[2];
    size_t n = 0;
    if (t.done < kFrameHeaderBytes) iov[n++] = {t.header + t.done, kFrameHeaderBytes - t.done};
    size_t payload_done = t.done > kFrameHeaderBytes ? t.done - kFrameHeaderBytes : 0;
    if (payload_done < t.bytes) iov[n++] = {t.data + payload_done, t.bytes - payload_done};
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = n;
    ssize_t k = ::recvmsg(t.link->fd, &m, MSG_DONTWAIT);
    if (k > 0) {
      t.done += size_t(k);
      t.link->mid_frame = true;
      if (!t.header_checked && t.done >= kFrameHeaderBytes) check_header(t);
      continue;
    }
    if (k == 0) peer_lost(t.peer, fmt::format("{} closed the connection", who(t.peer)));
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    if (errno == ECONNRESET || errno == ENOTCONN) peer_lost(t.peer, fmt::format("{} closed the connection", who(t.peer)));
    fail(fmt::format("receiving from {} failed: {}", who(t.peer), std::strerror(errno)));
  }
  t.finished = true;
  t.link->mid_frame = false;
  ++t.link->seq;
  stats_.bytes_received += t.bytes;
}

void TcpGroup::check_header(Transfer& t) {
  FrameHeader h = decode_frame_header(t.header);
  if (h.magic == kDataMagic) {
    if (h.seq != t.link->seq)
      fail(fmt::format("{} sent message #{} where #{} was due: the stream is corrupted", who(t.peer), h.seq, t.link->seq));
    if (h.length != t.bytes)
      fail(fmt::format("{} sent a message of {} bytes where this rank expected {} (do the ranks call in the same order?)",
                       who(t.peer), h.length, t.bytes));
    t.header_checked = true;
    return;
  }
  if (h.magic == kGoodbyeMagic)
    fail(fmt::format("{} left the group while this rank expected {} bytes from it", who(t.peer), t.bytes));
  if (h.magic == kAbortMagic && h.length <= kMaxAbortMessageBytes) {
    // Part of the reason may already sit in the caller's buffer; the rest follows on the socket.
    std::string reason(size_t(h.length), '\0');
    size_t have = std::min(t.done - kFrameHeaderBytes, size_t(h.length));
    if (have > 0) std::memcpy(reason.data(), t.data, have);
    std::string why;
    read_all_before(t.link->fd, reason.data() + have, reason.size() - have, Clock::now() + std::chrono::seconds(1), &why);
    fail_reported(t.peer, reason);
  }
  fail(fmt::format("{} sent a corrupted message header (magic {:#010x}, length {})", who(t.peer), h.magic, h.length));
}

// What a peer left on one of its links before closing it. An out link holds only the peer's
// control frames; an in link holds the peer's unread messages first. Peeks, never consumes.
TcpGroup::PeerNote TcpGroup::read_note(int peer, bool incoming) {
  Link& l = incoming ? in_[size_t(peer)] : out_[size_t(peer)];
  if (l.fd < 0 || (incoming && l.mid_frame)) return {};
  int queued = 0;
  if (::ioctl(l.fd, FIONREAD, &queued) != 0 || queued <= 0) return {};
  std::vector<uint8_t> bytes(static_cast<size_t>(queued));  // rare path: only when a peer leaves
  ssize_t got = ::recv(l.fd, bytes.data(), bytes.size(), MSG_PEEK | MSG_DONTWAIT);
  if (got <= 0) return {};
  size_t offset = 0, n = size_t(got);
  while (offset + kFrameHeaderBytes <= n) {
    FrameHeader h = decode_frame_header(bytes.data() + offset);
    offset += kFrameHeaderBytes;
    if (h.magic == kDataMagic && incoming) {
      if (h.length > n - offset) return {};  // cut off: the peer died while sending it
      offset += h.length;
    } else if (h.magic == kGoodbyeMagic) {
      return {PeerNote::goodbye, ""};
    } else if (h.magic == kAbortMagic && h.length <= kMaxAbortMessageBytes) {
      return {PeerNote::abort, std::string(text_of(bytes.data() + offset, std::min<size_t>(h.length, n - offset)))};
    } else {
      return {PeerNote::corrupted, fmt::format("{} sent a corrupted message header (magic {:#010x})", who(peer), h.magic)};
    }
  }
  return {};
}

// A link to `peer` broke. If the peer said why (an abort on either of its links), that reason is
// the error: it names the rank that failed first, not the neighbour that passed it on.
void TcpGroup::peer_lost(int peer, std::string fallback) {
  bool said_goodbye = false;
  for (bool incoming : {true, false}) {
    PeerNote note = read_note(peer, incoming);
    if (note.kind == PeerNote::abort) fail_reported(peer, note.text);
    said_goodbye |= note.kind == PeerNote::goodbye;
  }
  if (said_goodbye || departed_[size_t(peer)]) fail(fmt::format("{} has left the group", who(peer)));
  fail(std::move(fallback));
}

// A connection this call is not using was closed by its peer: a goodbye (fine, unless we need
// that peer later), an abort (its failure becomes ours), or nothing (the peer died). The peer
// writes its note on both links; either one tells.
void TcpGroup::examine_hangup(int peer, bool incoming) {
  for (bool which : {incoming, !incoming}) {
    PeerNote note = read_note(peer, which);
    switch (note.kind) {
      case PeerNote::goodbye:
        departed_[size_t(peer)] = true;
        return;
      case PeerNote::abort:
        fail_reported(peer, note.text);
      case PeerNote::corrupted:
        fail(note.text);
      case PeerNote::nothing:
        break;
    }
  }
  fail(fmt::format("{} closed the connection", who(peer)));
}

void TcpGroup::run_transfers() {
  auto deadline = Clock::now() + timeout_;
  for (;;) {
    bool all_finished = true, progressed = false;
    for (auto& t : transfers_) {
      if (t.finished) continue;
      size_t before = t.done;
      t.sending ? advance_send(t) : advance_recv(t);
      progressed |= t.done != before;
      all_finished &= t.finished;
    }
    if (all_finished) {
      transfers_.clear();
      hung_up_.clear();  // looked at again by the next wait, if the link still matters then
      return;
    }
    // Only now, after the data that had already arrived was taken: a peer that finished its part
    // of this call and then failed must not fail a call that it has fully served.
    for (auto [peer, incoming] : hung_up_) examine_hangup(peer, incoming);
    hung_up_.clear();
    // A transfer's deadline is on silence, not on its total length: any progress resets it.
    if (progressed) deadline = Clock::now() + timeout_;

    pollfds_.clear();
    watched_.clear();
    for (auto& t : transfers_)
      if (!t.finished) pollfds_.push_back({t.link->fd, short(t.sending ? POLLOUT : POLLIN), 0});
    size_t first_watch = pollfds_.size();
    // Watch every other connection for a hang-up, so that a rank that died elsewhere in the group
    // is named at once instead of after a timeout or as "the neighbour that gave up".
    for (int p = 0; p < size_; ++p) {
      if (departed_[size_t(p)]) continue;
      for (bool incoming : {false, true}) {
        const Link& l = incoming ? in_[size_t(p)] : out_[size_t(p)];
        if (l.fd < 0) continue;
        bool busy = false;
        for (auto& t : transfers_) busy |= !t.finished && t.link == &l;
        if (busy) continue;
        pollfds_.push_back({l.fd, POLLRDHUP, 0});
        watched_.push_back({p, incoming});
      }
    }
    int ready = ::poll(pollfds_.data(), pollfds_.size(), poll_ms_until(deadline));
    if (ready < 0 && errno != EINTR) fail(fmt::format("poll failed: {}", std::strerror(errno)));
    if (ready == 0 && Clock::now() >= deadline) {
      for (auto& t : transfers_)
        if (!t.finished)
          fail(fmt::format("timed out after {:.1f} s waiting for {} to {} {} bytes",
                           std::chrono::duration<double>(timeout_).count(), who(t.peer),
                           t.sending ? "read the" : "send", t.bytes));
    }
    for (size_t i = 0; i < watched_.size(); ++i)
      if (pollfds_[first_watch + i].revents) hung_up_.push_back(watched_[i]);
  }
}

void TcpGroup::write_control_frame(Link& link, bool in_link, uint32_t magic, std::string_view payload) {
  if (link.fd < 0 || (!in_link && link.mid_frame)) return;
  uint8_t header[kFrameHeaderBytes];
  encode(FrameHeader{magic, 0, payload.size()}, header);
  iovec iov[2] = {{header, sizeof header}, {const_cast<char*>(payload.data()), payload.size()}};
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = payload.empty() ? 1 : 2;
  [[maybe_unused]] ssize_t k = ::sendmsg(link.fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);  // best effort
}

// The group is unusable from here on: tell every peer why (so that ranks that are not connected
// to the failed one learn about it too), half-close every connection, and throw.
void TcpGroup::fail(std::string message) {
  if (broken_.empty()) {
    broken_ = message;
    std::string_view reason(message.data(), std::min(message.size(), kMaxAbortMessageBytes));
    for (int p = 0; p < size_; ++p)
      for (bool in_link : {false, true}) {
        Link& l = in_link ? in_[size_t(p)] : out_[size_t(p)];
        if (l.fd < 0) continue;
        if (!departed_[size_t(p)]) write_control_frame(l, in_link, kAbortMagic, reason);
        ::shutdown(l.fd, SHUT_WR);
      }
  }
  transfers_.clear();
  hung_up_.clear();
  throw CommError(message);
}

// Names the rank that saw the failure first; ranks further along pass its report on unchanged.
void TcpGroup::fail_reported(int peer, std::string_view root) {
  if (root.find(kReportedBy) != std::string_view::npos) fail(std::string(root));
  fail(fmt::format("{}{}{})", root, kReportedBy, peer));
}

uint8_t* TcpGroup::scratch(size_t bytes) {
  if (scratch_.size() < bytes) scratch_.resize(bytes);
  return scratch_.data();
}

void TcpGroup::send(int peer, const void* data, size_t bytes) {
  CallScope scope(*this);
  check_peer(peer, "destination");
  add_send(peer, data, bytes);
  run_transfers();
}

void TcpGroup::recv(int peer, void* data, size_t bytes) {
  CallScope scope(*this);
  check_peer(peer, "source");
  add_recv(peer, data, bytes);
  run_transfers();
}

void TcpGroup::send_recv(int to, const void* send_data, size_t send_bytes, int from, void* recv_data, size_t recv_bytes) {
  CallScope scope(*this);
  check_peer(to, "destination");
  check_peer(from, "source");
  add_send(to, send_data, send_bytes);
  add_recv(from, recv_data, recv_bytes);
  run_transfers();
}

// Every rank sends its whole buffer to every other, then each sums the n buffers in rank order:
// the same additions in the same order everywhere, so every rank gets the same bits.
template <class T>
void TcpGroup::direct_all_reduce(T* data, size_t count) {
  const size_t bytes = count * sizeof(T);
  uint8_t* slots = scratch(bytes * size_t(size_));
  for (int p = 0; p < size_; ++p)
    if (p != rank_) {
      add_send(p, data, bytes);
      add_recv(p, slots + size_t(p) * bytes, bytes);
    }
  run_transfers();
  auto values_of = [&](int r) { return r == rank_ ? data : reinterpret_cast<const T*>(slots + size_t(r) * bytes); };
  constexpr size_t kBlock = 2048;  // the running sums stay in L1
  float sum[kBlock];
  for (size_t begin = 0; begin < count; begin += kBlock) {
    const size_t n = std::min(kBlock, count - begin);
    const T* first = values_of(0) + begin;
    for (size_t i = 0; i < n; ++i) sum[i] = widen(first[i]);
    for (int r = 1; r < size_; ++r) add_into(sum, values_of(r) + begin, n);
    if constexpr (std::is_same_v<T, float>) {
      std::memcpy(data + begin, sum, n * sizeof(float));
    } else {
      for (size_t i = 0; i < n; ++i) data[begin + i] = f32_to_bf16(sum[i]);
    }
  }
}

// Reduce-scatter then all-gather round the ring, as ring_all_reduce_sum of collectives.h (same
// chunks, same order of additions) but into this group's scratch: no allocation per call.
void TcpGroup::ring_all_reduce(float* data, size_t count, float* incoming) {
  const int n = size_, r = rank_, right = (r + 1) % n, left = (r + n - 1) % n;
  auto begin = [&](int chunk) { return count * size_t(chunk) / size_t(n); };
  auto length = [&](int chunk) { return begin(chunk + 1) - begin(chunk); };
  for (int step = 0; step < n - 1; ++step) {
    int out = (r - step + n) % n, in = (r - step - 1 + n) % n;
    add_send(right, data + begin(out), length(out) * sizeof(float));
    add_recv(left, incoming, length(in) * sizeof(float));
    run_transfers();
    add_into(data + begin(in), incoming, length(in));
  }
  for (int step = 0; step < n - 1; ++step) {
    int out = (r + 1 - step + n) % n, in = (r - step + n) % n;
    add_send(right, data + begin(out), length(out) * sizeof(float));
    add_recv(left, data + begin(in), length(in) * sizeof(float));
    run_transfers();
  }
}

void TcpGroup::all_reduce_sum(float* data, size_t count) {
  CallScope scope(*this);
  if (size_ == 1 || count == 0) return;
  if (goes_direct(count * sizeof(float))) {
    direct_all_reduce(data, count);
    return;
  }
  ring_all_reduce(data, count, reinterpret_cast<float*>(scratch((count / size_t(size_) + 1) * sizeof(float))));
}

void TcpGroup::all_reduce_sum_bf16(uint16_t* data, size_t count) {
  CallScope scope(*this);
  if (size_ == 1 || count == 0) return;
  if (goes_direct(count * sizeof(uint16_t))) {
    direct_all_reduce(data, count);
    return;
  }
  // Summed in f32 round the ring (a bf16 partial sum per hop would lose bits), rounded once.
  float* wide = reinterpret_cast<float*>(scratch((count + count / size_t(size_) + 1) * sizeof(float)));
  for (size_t i = 0; i < count; ++i) wide[i] = bf16_to_f32(data[i]);
  ring_all_reduce(wide, count, wide + count);
  for (size_t i = 0; i < count; ++i) data[i] = f32_to_bf16(wide[i]);
}

void TcpGroup::direct_all_gather(const void* mine, size_t bytes, void* all) {
  auto* out = static_cast<uint8_t*>(all);
  if (out + size_t(rank_) * bytes != mine) std::memmove(out + size_t(rank_) * bytes, mine, bytes);
  for (int p = 0; p < size_; ++p)
    if (p != rank_) {
      add_send(p, out + size_t(rank_) * bytes, bytes);
      add_recv(p, out + size_t(p) * bytes, bytes);
    }
  run_transfers();
}

void TcpGroup::all_gather(const void* mine, size_t bytes, void* all) {
  CallScope scope(*this);
  if (size_ == 1) {
    if (all != mine) std::memmove(all, mine, bytes);
    return;
  }
  if (mesh_) return direct_all_gather(mine, bytes, all);
  ring_all_gather(*this, mine, bytes, all);
}

// An all-gather of one byte: nobody leaves before everyone's byte has arrived. Ring: n-1 hops
// to the neighbour, never a connection to a non-neighbour.
void TcpGroup::barrier() {
  CallScope scope(*this);
  if (size_ == 1) return;
  uint8_t* bytes = scratch(size_t(size_));
  bytes[rank_] = 1;
  if (mesh_) return direct_all_gather(bytes + rank_, 1, bytes);
  ring_all_gather(*this, bytes + rank_, 1, bytes);
}

}  // namespace tcp

std::unique_ptr<Group> make_tcp_group(const TcpGroupOptions& options) { return std::make_unique<tcp::TcpGroup>(options); }

}  // namespace shardlm::comm
