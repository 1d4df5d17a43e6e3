// HTTP basic authentication for the exporter: the users of a web config
// (bcrypt hashes) or of the deprecated --basic-auth-file (plaintext
// "user:password" lines).
//
// bcrypt is slow by design (a cost of 10 takes ~50 ms), so checking is split
// in two, as exporter-toolkit does with its cache: VerifiedBefore answers at
// once for credentials that passed before, FailedBefore for credentials that
// failed in the last minute (so clients repeating a wrong password cannot
// keep the bcrypt thread busy), and only the rest need Verify, which the
// server can run off its I/O threads.
//
//   BasicAuth auth = BasicAuth::FromWebConfig(config);
//   auth.InheritVerified(previous_auth);   // on reload: nobody pays bcrypt again
//   std::optional<Credentials> credentials = ParseBasicAuthorization(request["Authorization"]);
//   if (!credentials) -> 401
//   else if (auth.VerifiedBefore(*credentials)) -> serve
//   else if (auth.FailedBefore(*credentials)) -> 401
//   else -> on a worker: auth.Verify(*credentials) ? serve : 401
//
// Thread safety: thread-safe; VerifiedBefore, FailedBefore, Verify and
// InheritVerified may be called from any number of threads at once.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "web_config.h"

namespace shmetrics::exporter {

struct Credentials {
  std::string user;
  std::string password;
};

// Parses an Authorization header's value: the scheme "Basic" in any case,
// one or more spaces, then base64 of "user:password" (split at the first
// ':', so a password may contain ':'). nullopt for anything else.
std::optional<Credentials> ParseBasicAuthorization(absl::string_view header_value);

class BasicAuth {
 public:
  // No users: enabled() is false and nothing verifies.
  BasicAuth();
  BasicAuth(BasicAuth&&) noexcept;
  BasicAuth& operator=(BasicAuth&&) noexcept;
  ~BasicAuth();

  // The users of `config.basic_auth_users` (which ParseWebConfig has checked
  // to be bcrypt hashes). No users: not enabled.
  static BasicAuth FromWebConfig(const WebConfig& config);

  // The deprecated --basic-auth-file: "user:password" lines (split at the
  // first ':'), CRLF or LF; blank lines and lines starting with '#' are
  // skipped. A line without ':', an empty or repeated user name, an
  // unreadable file (or one ReadSmallRegularFile refuses: web_config.h) or
  // one with no user is an error naming the file (and the line number).
  static absl::StatusOr<BasicAuth> FromLegacyFile(const std::string& path);

  // Whether requests must authenticate at all.
  bool enabled() const;

  // Fast, never runs bcrypt: true for credentials that Verify accepted
  // before (remembered as a SHA-256 of user, password and stored hash, for
  // the last ~1024 of them), or, for a plaintext user, when the password is
  // right (a constant-time comparison).
  bool VerifiedBefore(const Credentials& credentials) const;

  // Fast, never runs bcrypt: true for credentials that Verify refused after
  // a bcrypt check in the last 60 s (remembered like VerifiedBefore's, for
  // up to 4096 of them). Always false for plaintext users, whose check is
  // fast anyway.
  bool FailedBefore(const Credentials& credentials) const;

  // Slow: true when the password is the user's. A bcrypt check costs the
  // same whether the user exists or not (an unknown user is checked against
  // a dummy hash of the configured cost). The verdict is remembered for
  // VerifiedBefore and FailedBefore, and credentials remembered either way
  // are answered at once (requests queued with the same credentials before
  // the first was decided). A password holding a NUL byte is refused
  // (crypt(3) would stop reading at it).
  bool Verify(const Credentials& credentials);

  // Remembers what `previous` remembers (both verdicts), for a BasicAuth
  // made from a reloaded config. Entries of a user whose hash changed, or
  // who was removed or added, never match: the stored hash is part of what
  // is remembered. `previous` may be in use by other threads meanwhile.
  void InheritVerified(const BasicAuth& previous);

 private:
  struct User {
    std::string secret;  // bcrypt hash, or the plaintext password of a legacy user
    bool plaintext = false;
  };
  struct Cache;

  // What the cache knows these credentials by, when a bcrypt check decides
  // on them; nullopt for plaintext users, and for unknown users when there
  // is no bcrypt user.
  std::optional<std::string> CacheKeyOf(const Credentials& credentials) const;

  absl::flat_hash_map<std::string, User> users_;
  std::string dummy_hash_;        // bcrypt setting for unknown users; empty with plaintext users only
  std::unique_ptr<Cache> cache_;  // behind a pointer: holds a mutex, and BasicAuth moves
};

}  // namespace shmetrics::exporter
