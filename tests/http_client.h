// A plain HTTP/1.1 client on one socket, for tests that need what curl
// hides: a connection kept alive across requests, raw request bytes,
// pipelining, idle and slow connections. Reads Content-Length and chunked
// bodies; every read has a timeout, so a test never hangs.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <dirent.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace shmetrics::testing {

struct RawResponse {
  int status = 0;  // 0: no (complete) response
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;                            // chunked: decoded
  std::string Header(const std::string& name) const {
    const auto it = headers.find(name);
    return it == headers.end() ? "" : it->second;
  }
};

class HttpConnection {
 public:
  // Connects to 127.0.0.1:port (or ::1 when ipv6); fd() < 0 on failure.
  explicit HttpConnection(int port, bool ipv6 = false, int timeout_seconds = 5) {
    fd_ = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return;
    timeval timeout{timeout_seconds, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    int rc;
    if (ipv6) {
      sockaddr_in6 address{};
      address.sin6_family = AF_INET6;
      address.sin6_port = htons(static_cast<uint16_t>(port));
      address.sin6_addr = in6addr_loopback;
      rc = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    } else {
      sockaddr_in address{};
      address.sin_family = AF_INET;
      address.sin_port = htons(static_cast<uint16_t>(port));
      address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      rc = connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    }
    if (rc != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~HttpConnection() {
    if (fd_ >= 0) close(fd_);
  }
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;

  int fd() const { return fd_; }
  bool Send(const std::string& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  // GET (or HEAD) of `path` with `extra_headers` ("Name: value\r\n" each).
  RawResponse Request(const std::string& path, const std::string& extra_headers = "", const char* method = "GET") {
    if (!Send(absl::StrCat(method, " ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n", extra_headers, "\r\n"))) return {};
    return Read(std::string(method) == "HEAD");
  }
  // Reads one response; status 0 when the connection closed or timed out first.
  RawResponse Read(bool head = false) {
    RawResponse response;
    size_t header_end;
    while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return {};
    }
    const std::string header = buffer_.substr(0, header_end);
    buffer_.erase(0, header_end + 4);
    size_t line_end = header.find("\r\n");
    const std::string status_line = header.substr(0, line_end);
    if (status_line.size() < 12 || !absl::SimpleAtoi(status_line.substr(9, 3), &response.status)) return {};
    while (line_end != std::string::npos) {
      const size_t next = header.find("\r\n", line_end + 2);
      const std::string line = header.substr(line_end + 2, next == std::string::npos ? std::string::npos : next - line_end - 2);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        response.headers[absl::AsciiStrToLower(line.substr(0, colon))] =
            std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
      line_end = next;
    }
    if (head) return response;
    if (response.Header("transfer-encoding") == "chunked") {
      while (true) {
        size_t size_end;
        while ((size_end = buffer_.find("\r\n")) == std::string::npos) {
          if (!Fill()) return {};
        }
        size_t size = 0;
        if (!absl::SimpleHexAtoi(buffer_.substr(0, size_end), &size)) return {};
        while (buffer_.size() < size_end + 2 + size + 2) {
          if (!Fill()) return {};
        }
        response.body.append(buffer_, size_end + 2, size);
        buffer_.erase(0, size_end + 2 + size + 2);
        if (size == 0) return response;  // no trailers are sent
      }
    }
    size_t length = 0;
    if (!absl::SimpleAtoi(response.Header("content-length"), &length)) {
      // Neither framing: the body ends with the connection (HTTP/1.0).
      if (response.Header("connection") != "close") return {};
      while (Fill()) {
      }
      response.body = std::move(buffer_);
      buffer_.clear();
      return response;
    }
    while (buffer_.size() < length) {
      if (!Fill()) return {};
    }
    response.body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    return response;
  }
  // Whether the server closed the connection (reads EOF within the timeout).
  bool ClosedByPeer() {
    char byte;
    const ssize_t n = recv(fd_, &byte, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }

 private:
  bool Fill() {
    char chunk[65536];
    const ssize_t n = recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }
  int fd_ = -1;
  std::string buffer_;
};

// The TCP_NODELAY option of the server's end of `client_fd`, read from the
// server process itself: each of its sockets is borrowed with
// pidfd_getfd(2) (Linux 5.6; the server is our child) until one's peer is
// the client's local address. -1: not found.
inline int ServerSideNoDelay(pid_t server, int client_fd) {
  sockaddr_storage client{};
  socklen_t client_size = sizeof client;
  if (getsockname(client_fd, reinterpret_cast<sockaddr*>(&client), &client_size) != 0) return -1;
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, server, 0));  // glibc 2.36 declares no C linkage for it
  if (pidfd < 0) return -1;
  int result = -1;
  const std::string fd_dir = "/proc/" + std::to_string(server) + "/fd";
  if (DIR* dir = opendir(fd_dir.c_str())) {
    while (dirent* entry = readdir(dir)) {
      int remote_fd = 0;
      if (result >= 0 || !absl::SimpleAtoi(entry->d_name, &remote_fd)) continue;
      const int fd = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, remote_fd, 0));
      if (fd < 0) continue;
      sockaddr_storage peer{};
      socklen_t peer_size = sizeof peer;
      if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) == 0 && peer_size == client_size &&
          std::memcmp(&peer, &client, client_size) == 0) {
        int no_delay = 0;
        socklen_t size = sizeof no_delay;
        if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &no_delay, &size) == 0) result = no_delay != 0 ? 1 : 0;
      }
      close(fd);
    }
    closedir(dir);
  }
  close(pidfd);
  return result;
}

}  // namespace shmetrics::testing
