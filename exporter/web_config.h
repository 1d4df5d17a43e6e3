// The exporter's --web.config.file: TLS and basic-auth settings in the YAML
// format of Prometheus' exporter-toolkit
// (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md),
// so a file written for another exporter works here, or is refused with a
// message that says which key is the problem.
//
//   tls_server_config:
//     cert_file: server.crt         # relative to the config file's directory
//     key_file: server.key
//     client_auth_type: RequireAndVerifyClientCert
//     client_ca_file: clients-ca.crt
//     min_version: TLS12
//   basic_auth_users:
//     alice: $2y$10$...             # bcrypt: htpasswd -nBC 10 "" | tr -d ':\n'
//
// Parsing is strict, as exporter-toolkit's: an unknown or duplicate key is an
// error, and so is a key of that format which shmetrics-exporter does not
// implement (cipher_suites, client_allowed_sans, ...), rather than a setting
// silently ignored. Two keys that change nothing here are accepted:
// prefer_server_cipher_suites (Go ignores it too) and http_server_config.http2
// (the exporter speaks HTTP/1.1, which every HTTP/2 client falls back to).
// Stricter than exporter-toolkit: TLS10 and TLS11 are refused (OpenSSL 3
// fails those handshakes at its default security level), and so are bcrypt
// costs above kMaxBcryptCost.
//
// Usage:
//   absl::StatusOr<WebConfig> config = LoadWebConfig(path);
//   if (config.ok() && config->tls) context = MakeTlsContext(*config->tls);   // tls_context.h
//   BasicAuth auth = BasicAuth::FromWebConfig(*config);                     // basic_auth.h
#pragma once

#include <openssl/tls1.h>

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shmetrics::exporter {

// tls_server_config.client_auth_type; the names are Go's tls.ClientAuthType.
enum class ClientAuth {
  kNoClientCert,                // default: no client certificate is asked for
  kRequestClientCert,           // asked for, not required, not verified
  kRequireAnyClientCert,        // required, not verified ("RequireClientCert" is an alias)
  kVerifyClientCertIfGiven,     // not required; verified against client_ca_file when sent
  kRequireAndVerifyClientCert,  // required and verified: the only one that authenticates clients
};

struct TlsSettings {
  // PEM files, made absolute against the config file's directory when
  // relative (as exporter-toolkit does). Both are required.
  std::string cert_file;  // the certificate, then any intermediates
  std::string key_file;   // unencrypted private key
  ClientAuth client_auth = ClientAuth::kNoClientCert;
  // PEM CA certificates for client certificates: required for the two
  // Verify* modes, refused with kNoClientCert (exporter-toolkit refuses it too).
  std::string client_ca_file;
  int min_version = TLS1_2_VERSION;  // "TLS12" or "TLS13"; exporter-toolkit's default is TLS12
  int max_version = 0;               // 0: the library's maximum (TLS 1.3)
};

// The highest bcrypt cost accepted. Each step doubles the time of a check:
// cost 10 takes ~50 ms on a current x86 core, 16 about 3 s, and 31 would take
// days, for every request whose credentials are not remembered yet (and
// shutdown waits for a check in progress). 10 to 12 is usual.
inline constexpr int kMaxBcryptCost = 16;

// The config file and each certificate, key and CA file it names may be at
// most this large.
inline constexpr size_t kMaxWebConfigFileBytes = size_t{1} << 20;

struct WebConfig {
  std::optional<TlsSettings> tls;  // absent: plain HTTP
  // User name -> bcrypt hash, in file order; empty: no authentication.
  std::vector<std::pair<std::string, std::string>> basic_auth_users;
};

// Parses the text of a web config file. `path` is the file the text came
// from: every error message starts with "web config <path>: ", and relative
// file names in it are resolved against its directory. Touches no file: a
// missing certificate is LoadWebConfig's error. An empty document or `{}`
// is valid and means no TLS and no authentication.
absl::StatusOr<WebConfig> ParseWebConfig(absl::string_view yaml_text, const std::string& path);

// Reads and parses `path`, then checks that the certificate, key and client
// CA files it names are readable regular files of at most
// kMaxWebConfigFileBytes (MakeTlsContext loads them). A missing or unreadable
// config file is an error, and so is one that is not a regular file (a FIFO,
// /dev/zero) or is larger than kMaxWebConfigFileBytes.
absl::StatusOr<WebConfig> LoadWebConfig(const std::string& path);

// The contents of `path` (symbolic links followed), which must be a regular
// file of at most kMaxWebConfigFileBytes. Never blocks on a FIFO or device:
// it is opened with O_NONBLOCK and checked before anything is read. The
// error's message is only the reason ("No such file or directory", "not a
// regular file", "larger than the limit of 1 MiB"), for the caller to prefix.
absl::StatusOr<std::string> ReadSmallRegularFile(const std::string& path);

}  // namespace shmetrics::exporter
