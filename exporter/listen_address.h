// --web.listen-address: what each form means.
//
//   127.0.0.1:9464, 0.0.0.0:9464   an IPv4 address (0.0.0.0: every interface)
//   [::1]:9464, [::]:9464          an IPv6 address ([::]: every interface, IPv6 only)
//   localhost:9464                 every address the name resolves to
//   :9464 or 9464                  loopback (127.0.0.1) only: never every
//                                  interface unless an address says so
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shmetrics::exporter {

struct ListenAddress {
  std::string host;      // an IP literal (without brackets) or a host name
  uint16_t port = 0;
  bool bare_port = false;  // ":PORT" or "PORT": host was set to 127.0.0.1
};

// InvalidArgument naming the text and what is wrong with it.
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view text);

// "127.0.0.1:9464", "[::1]:9464": an endpoint as users write it.
std::string FormatEndpoint(const std::string& ip, uint16_t port);

}  // namespace shmetrics::exporter
