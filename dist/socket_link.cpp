// The tcp/file transport: a star of TCP sockets around rank 0 (dist/launch.h says how ranks meet).
//
// Rendezvous. Rank 0 listens (IPv4, every interface) on MASTER_PORT, or for the file bootstrap on
// MASTER_PORT or any free port, and then writes "loom-rendezvous <host> <port> <nonce>" to
// LOOM_RENDEZVOUS_FILE through a temporary file and rename(2), so a reader never sees half a file.
// Every other rank connects, retrying until LOOM_DIST_TIMEOUT_S (rank 0 may start last), and sends
// a Hello {magic, nonce, rank, world}. Rank 0 drops connections with a foreign magic or nonce (a
// port scanner; a stale file whose port now belongs to another run), fails on a different world
// size or a rank claimed twice, and once all world-1 ranks are in answers each with its own Hello.
// It then deletes the file (also when the rendezvous fails), so the next run reads no stale address.
//
// Liveness. A watcher thread polls every socket for POLLRDHUP: a peer that ended (abort, crash,
// kill -9) has its sockets closed by the kernel, and this rank ends at once with a message, even
// while it computes outside any collective. close() stops the watcher before the bye/ack exchange
// that precedes closing, so an orderly end never looks like a crash.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "dist/link.h"
#include "ops/error.h"

namespace loom {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint64_t kHelloMagic = 0x6c6f6f6d2d726476ull;  // "loom-rdv"
constexpr uint8_t kBye = 0xb1, kAck = 0xac;
constexpr auto kConnectAttempt = std::chrono::seconds(5);  // per try; unreachable hosts otherwise stall ~2 min
constexpr auto kHelloWait = std::chrono::seconds(10);      // a connection that says nothing is not a rank
constexpr auto kRetryPause = milliseconds(100);

struct Hello {
  uint64_t magic;
  uint64_t nonce;  // 0 for tcp; random per run for the file bootstrap
  int32_t rank;
  int32_t world;
};

// An owned socket descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string errno_text() { return std::strerror(errno); }

Clock::time_point deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Waits until fd reports `events` (or an error/hangup, which the next I/O call reports); false
// once the deadline passes.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, int(std::min<long long>(left, INT_MAX)));
    if (r > 0 || (r < 0 && errno != EINTR)) return true;
  }
}

enum class Io { ok, closed, timed_out };

Io read_exact(int fd, void* data, size_t bytes, Clock::time_point deadline, std::string* why) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    if (!wait_fd(fd, POLLIN, deadline)) return Io::timed_out;
    const ssize_t got = ::recv(fd, p, bytes, MSG_DONTWAIT);
    if (got > 0) {
      p += got;
      bytes -= size_t(got);
    } else if (got == 0) {
      *why = "connection closed";
      return Io::closed;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      *why = errno_text();
      return Io::closed;
    }
  }
  return Io::ok;
}

Io write_exact(int fd, const void* data, size_t bytes, Clock::time_point deadline, std::string* why) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    if (!wait_fd(fd, POLLOUT, deadline)) return Io::timed_out;
    // MSG_NOSIGNAL: a closed peer is an error to report, not a SIGPIPE that kills us silently.
    const ssize_t put = ::send(fd, p, bytes, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (put >= 0) {
      p += put;
      bytes -= size_t(put);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      *why = errno_text();
      return Io::closed;
    }
  }
  return Io::ok;
}

// Small messages (barriers, headers) go out at once instead of waiting for Nagle's timer.
void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// ---------------------------------------------------------------------------------------------
// Rank 0's side.

Fd listen_on(int port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  LOOM_CHECK(fd, "rendezvous: cannot create a TCP socket: ", errno_text());
  int one = 1;
  // A run restarted at once finds its port in TIME_WAIT; reuse it instead of failing.
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(uint16_t(port));
  LOOM_CHECK(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && ::listen(fd.get(), 128) == 0,
             "rendezvous: rank 0 cannot listen on TCP port ", port, " (MASTER_PORT): ", errno_text(),
             "; choose a free MASTER_PORT");
  return fd;
}

int bound_port(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  LOOM_CHECK(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0,
             "rendezvous: cannot read the listening port: ", errno_text());
  return ntohs(addr.sin_port);
}

std::string this_host() {
  char name[256] = {};
  LOOM_CHECK(::gethostname(name, sizeof name - 1) == 0, "rendezvous: gethostname failed: ", errno_text(),
             "; set MASTER_ADDR to an address of rank 0's host that the other ranks can reach");
  return name;
}

void publish_address(const std::string& path, const std::string& host, int port, uint64_t nonce) {
  const std::string tmp = cat(path, ".tmp.", ::getpid());
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << "loom-rendezvous " << host << ' ' << port << ' ' << nonce << '\n';
    LOOM_CHECK(f.flush(), "rendezvous: cannot write ", tmp, " (LOOM_RENDEZVOUS_FILE=", path,
               "); use a path in a writable folder that every rank can read");
  }
  LOOM_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "rendezvous: cannot rename ", tmp, " to ", path, ": ",
             errno_text());
}

std::string missing_ranks(const std::vector<Fd>& peers) {
  std::string out;
  for (size_t r = 1; r < peers.size(); ++r)
    if (!peers[r]) out += (out.empty() ? "" : ", ") + std::to_string(r);
  return out;
}

// Reads one connection's Hello; false (and the connection dropped) if it is not a rank of this run.
bool admit(Fd fd, const LaunchPlan& plan, uint64_t nonce, Clock::time_point deadline, std::vector<Fd>& peers) {
  Hello h{};
  std::string why;
  if (read_exact(fd.get(), &h, sizeof h, std::min(deadline, Clock::now() + kHelloWait), &why) != Io::ok ||
      h.magic != kHelloMagic || h.nonce != nonce)
    return false;
  LOOM_CHECK(h.world == plan.world, "rendezvous: rank ", h.rank, " was started with WORLD_SIZE=", h.world,
             " but rank 0 with WORLD_SIZE=", plan.world, "; start every rank with the same WORLD_SIZE");
  LOOM_CHECK(h.rank >= 1 && h.rank < plan.world, "rendezvous: a process claims RANK=", h.rank,
             ", outside 1..", plan.world - 1);
  LOOM_CHECK(!peers[size_t(h.rank)], "rendezvous: two processes were started with RANK=", h.rank,
             "; give every process its own RANK in 0..", plan.world - 1);
  set_nodelay(fd.get());
  peers[size_t(h.rank)] = std::move(fd);
  return true;
}

std::vector<Fd> accept_ranks(const LaunchPlan& plan) {
  Fd listener = listen_on(plan.master_port);
  const int port = bound_port(listener.get());
  const bool file = plan.bootstrap == Bootstrap::file;
  // Deleted however the rendezvous ends, so the next run cannot read a stale address.
  struct Unpublish {
    std::string path;
    ~Unpublish() {
      if (!path.empty()) std::remove(path.c_str());
    }
  } unpublish{file ? plan.rendezvous_file : ""};
  uint64_t nonce = 0;
  if (file) {
    std::random_device entropy;
    nonce = (uint64_t(entropy()) << 32) ^ entropy() ^ uint64_t(::getpid());
    publish_address(plan.rendezvous_file, plan.master_addr.empty() ? this_host() : plan.master_addr, port, nonce);
  }

  const auto deadline = deadline_after(plan.timeout_s);
  std::vector<Fd> peers(size_t(plan.world));
  for (int joined = 0; joined < plan.world - 1;) {
    LOOM_CHECK(wait_fd(listener.get(), POLLIN, deadline), "rendezvous: after ", plan.timeout_s,
               " s (LOOM_DIST_TIMEOUT_S) rank 0 still misses rank(s) ", missing_ranks(peers), " of WORLD_SIZE=",
               plan.world, " (listening on port ", port, file ? cat(", published in ", plan.rendezvous_file) : "",
               "); start them with the same ", file ? "LOOM_RENDEZVOUS_FILE" : "MASTER_ADDR/MASTER_PORT",
               ", or raise LOOM_DIST_TIMEOUT_S");
    Fd fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (fd && admit(std::move(fd), plan, nonce, deadline, peers)) ++joined;
  }
  const Hello welcome{kHelloMagic, nonce, 0, plan.world};
  for (int r = 1; r < plan.world; ++r) {
    std::string why;
    LOOM_CHECK(write_exact(peers[size_t(r)].get(), &welcome, sizeof welcome, deadline, &why) == Io::ok,
               "rendezvous: rank ", r, " left before the rendezvous completed (", why, ")");
  }
  return peers;
}

// ---------------------------------------------------------------------------------------------
// The other ranks' side.

struct Address {
  std::string host;
  int port = 0;
  uint64_t nonce = 0;
};

// False while the file is missing or unreadable (rank 0 has not written it yet).
bool read_published(const std::string& path, Address* a, std::string* why) {
  std::ifstream f(path);
  if (!f) {
    *why = cat(path, ": ", errno_text());
    return false;
  }
  std::string tag;
  if (f >> tag >> a->host >> a->port >> a->nonce && tag == "loom-rendezvous") return true;
  *why = cat(path, " is not a loom rendezvous file");
  return false;
}

Fd connect_to(const Address& a, Clock::time_point deadline, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(a.host.c_str(), std::to_string(a.port).c_str(), &hints, &found); rc != 0) {
    *why = cat("cannot resolve '", a.host, "': ", gai_strerror(rc));
    return Fd();
  }
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  int rc = fd ? ::connect(fd.get(), found->ai_addr, found->ai_addrlen) : -1;
  ::freeaddrinfo(found);
  if (rc != 0 && errno != EINPROGRESS) {
    *why = errno_text();
    return Fd();
  }
  if (rc != 0) {
    if (!wait_fd(fd.get(), POLLOUT, std::min(deadline, Clock::now() + kConnectAttempt))) {
      *why = "connect timed out";
      return Fd();
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      *why = std::strerror(err);
      return Fd();
    }
  }
  set_nodelay(fd.get());
  return fd;
}

[[noreturn]] void rendezvous_timed_out(const LaunchPlan& plan, const Address& a, bool reached, const std::string& why) {
  if (plan.bootstrap == Bootstrap::file && a.host.empty())
    fail("rendezvous: rank ", plan.rank, " waited ", plan.timeout_s, " s (LOOM_DIST_TIMEOUT_S) for rank 0 to publish ",
         "its address in LOOM_RENDEZVOUS_FILE=", plan.rendezvous_file, " (", why, "); start rank 0 with the same ",
         "LOOM_RENDEZVOUS_FILE on a filesystem every rank sees, or raise LOOM_DIST_TIMEOUT_S");
  if (reached)
    fail("rendezvous: rank ", plan.rank, " reached rank 0 at ", a.host, ":", a.port, " but not all ", plan.world,
         " ranks joined within ", plan.timeout_s, " s (LOOM_DIST_TIMEOUT_S); start every rank, or raise "
         "LOOM_DIST_TIMEOUT_S");
  fail("rendezvous: rank ", plan.rank, " could not reach rank 0 at ", a.host, ":", a.port, " within ", plan.timeout_s,
       " s (LOOM_DIST_TIMEOUT_S; last error: ", why, "); check that rank 0 runs with the same ",
       plan.bootstrap == Bootstrap::file ? "LOOM_RENDEZVOUS_FILE" : "MASTER_ADDR/MASTER_PORT",
       " and that the port is reachable from this host, or raise LOOM_DIST_TIMEOUT_S");
}

Fd join_rank0(const LaunchPlan& plan) {
  const bool file = plan.bootstrap == Bootstrap::file;
  const auto deadline = deadline_after(plan.timeout_s);
  Address a;
  if (!file) a = {plan.master_addr, plan.master_port, 0};
  std::string why = "no attempt yet";
  for (;; std::this_thread::sleep_for(kRetryPause)) {
    if (Clock::now() >= deadline) rendezvous_timed_out(plan, a, false, why);
    if (file && !read_published(plan.rendezvous_file, &a, &why)) continue;
    Fd fd = connect_to(a, deadline, &why);
    if (!fd) continue;
    const Hello hello{kHelloMagic, a.nonce, plan.rank, plan.world};
    Hello welcome{};
    if (write_exact(fd.get(), &hello, sizeof hello, deadline, &why) != Io::ok) continue;
    const Io io = read_exact(fd.get(), &welcome, sizeof welcome, deadline, &why);
    if (io == Io::timed_out) rendezvous_timed_out(plan, a, true, why);
    if (io == Io::ok && welcome.magic == kHelloMagic && welcome.nonce == a.nonce) return fd;
    // Over tcp only rank 0 listens at that address, so a refusal is its verdict; a file may be
    // stale, so keep polling it until rank 0 writes a fresh one.
    LOOM_CHECK(file, "rendezvous: rank 0 at ", a.host, ":", a.port, " closed the connection of rank ", plan.rank,
               " (", why, "); see rank 0's error");
  }
}

// ---------------------------------------------------------------------------------------------

class SocketLink final : public Link {
 public:
  SocketLink(int rank, std::vector<Fd> peers, double timeout_s)
      : rank_(rank), peers_(std::move(peers)), timeout_s_(timeout_s) {
    LOOM_CHECK(::pipe2(wake_, O_CLOEXEC) == 0, "cannot create the watcher's pipe: ", errno_text());
    watcher_ = std::thread([this] { watch(); });
  }
  ~SocketLink() override {
    stop_watcher();
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  void send(int peer, const void* data, size_t bytes) override {
    std::string why;
    const Io io = write_exact(peer_fd(peer), data, bytes, deadline_after(timeout_s_), &why);
    if (io == Io::timed_out)
      fatal_once(cat("rank ", peer, " has not read for ", timeout_s_, " s (LOOM_DIST_TIMEOUT_S): it is stuck, or "
                     "it skipped a collective the others called; ending all ranks"));
    if (io == Io::closed) peer_lost(peer, why);
  }

  void recv(int peer, void* data, size_t bytes) override {
    std::string why;
    const Io io = read_exact(peer_fd(peer), data, bytes, deadline_after(timeout_s_), &why);
    if (io == Io::timed_out)
      fatal_once(cat("waited ", timeout_s_, " s (LOOM_DIST_TIMEOUT_S) for rank ", peer, " in a collective: it is ",
                     "stuck, or it skipped a collective the others called; ending all ranks"));
    if (io == Io::closed) peer_lost(peer, why);
  }

  void abort(int code) override {
    for (Fd& fd : peers_)
      if (fd) ::shutdown(fd.get(), SHUT_RDWR);
    std::_Exit(code);
  }

  // Rank 0 collects a bye from every rank, then acknowledges: nobody closes before every watcher
  // has stopped.
  void close() override {
    stop_watcher();
    uint8_t got = 0;
    if (rank_ != 0) {
      send(0, &kBye, 1);
      recv(0, &got, 1);
      if (got != kAck) fatal_once("dist_finalize: rank 0 is still in a collective that this rank skipped");
    } else {
      for (int r = 1; r < int(peers_.size()); ++r) {
        recv(r, &got, 1);
        if (got != kBye) fatal_once(cat("dist_finalize: rank ", r, " is still in a collective that rank 0 skipped"));
      }
      for (int r = 1; r < int(peers_.size()); ++r) send(r, &kAck, 1);
    }
    for (Fd& fd : peers_) fd.reset();
  }

 private:
  int peer_fd(int peer) const {
    if (peer < 0 || peer >= int(peers_.size()) || !peers_[size_t(peer)])
      fatal_once(cat("rank ", rank_, " has no connection to rank ", peer, " (only rank 0 talks to every rank)"));
    return peers_[size_t(peer)].get();
  }

  [[noreturn]] void peer_lost(int peer, const std::string& why) {
    if (rank_ == 0)
      fatal_once(cat("rank ", peer, " ended (", why, "); its own output says why; ending every rank"));
    fatal_once(cat("lost the connection to rank 0 (", why, "): a rank ended, and the first error above says why"));
  }

  void watch() {
    std::vector<pollfd> fds{{wake_[0], POLLIN, 0}};
    std::vector<int> rank_of{-1};
    for (size_t r = 0; r < peers_.size(); ++r)
      if (peers_[r]) {
        fds.push_back({peers_[r].get(), POLLRDHUP, 0});
        rank_of.push_back(int(r));
      }
    for (;;) {
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        fatal_once(cat("the connection watcher cannot poll its sockets: ", errno_text()));
      }
      if (fds[0].revents) return;
      for (size_t i = 1; i < fds.size(); ++i)
        if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) peer_lost(rank_of[i], "connection closed");
    }
  }

  void stop_watcher() {
    if (!watcher_.joinable()) return;
    const char stop = 1;
    while (::write(wake_[1], &stop, 1) < 0 && errno == EINTR) {
    }
    watcher_.join();
  }

  int rank_;
  std::vector<Fd> peers_;  // rank 0: one per other rank; others: peers_[0] only
  double timeout_s_;
  int wake_[2] = {-1, -1};  // written by stop_watcher to end watch()
  std::thread watcher_;
};

}  // namespace

std::unique_ptr<Link> make_socket_link(const LaunchPlan& plan) {
  std::vector<Fd> peers(size_t(plan.world));
  if (plan.rank == 0)
    peers = accept_ranks(plan);
  else
    peers[0] = join_rank0(plan);
  return std::make_unique<SocketLink>(plan.rank, std::move(peers), plan.timeout_s);
}

}  // namespace loom
