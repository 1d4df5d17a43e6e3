#include "basic_auth.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include <mutex>

namespace shmetrics::exporter {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxRememberedCredentials = 1024;
// Long enough that a client repeating a wrong password pays bcrypt about once
// a minute; short enough that the entries do not outlive their use.
constexpr Clock::duration kFailureMemory = std::chrono::seconds(60);
constexpr size_t kMaxRememberedFailures = 4096;

// Stands for the stored hash in the cache key of a user who does not exist:
// it is no bcrypt hash, so it never matches a real user's key.
constexpr absl::string_view kUnknownUser = "unknown user";

using Sha256 = std::array<unsigned char, 32>;

Sha256 Sha256Of(absl::string_view bytes) {
  Sha256 digest{};
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest.data(), &length, EVP_sha256(), nullptr);
  return digest;
}

// Compares digests so that neither the position of a difference nor the
// lengths show in the time taken.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  const Sha256 da = Sha256Of(a), db = Sha256Of(b);
  return CRYPTO_memcmp(da.data(), db.data(), da.size()) == 0;
}

// What the cache remembers of credentials: never the password itself.
std::string CacheKey(const Credentials& credentials, absl::string_view hash) {
  const Sha256 digest = Sha256Of(absl::StrCat(credentials.user, absl::string_view("\0", 1), credentials.password,
                                              absl::string_view("\0", 1), hash));
  return std::string(digest.begin(), digest.end());
}

// crypt(3) of `password` with `setting` (a bcrypt hash, or just its salt) equals `hash`.
bool CryptMatches(const std::string& password, const std::string& setting, const std::string& hash) {
  auto data = std::make_unique<crypt_data>();  // ~32 KiB: not on the stack; zeroed, as crypt_r needs
  const char* result = crypt_r(password.c_str(), setting.c_str(), data.get());
  if (result == nullptr || std::strlen(result) != hash.size()) return false;
  return CRYPTO_memcmp(result, hash.data(), hash.size()) == 0;
}

// "$2b$10$..." -> 10; 0 for what is not shaped like bcrypt (ParseWebConfig refuses those).
int BcryptCost(const std::string& hash) {
  if (hash.size() < 7 || !absl::ascii_isdigit(hash[4]) || !absl::ascii_isdigit(hash[5])) return 0;
  return (hash[4] - '0') * 10 + (hash[5] - '0');
}

}  // namespace

struct BasicAuth::Cache {
  // std::mutex, not absl::Mutex: Debian's Abseil carries no TSan annotations.
  mutable std::mutex mu;
  absl::flat_hash_set<std::string> verified;  // guarded by mu
  absl::flat_hash_map<std::string, Clock::time_point> failed;  // guarded by mu: key -> when Verify refused it

  void AddVerified(const std::string& key) {  // mu held
    if (verified.size() >= kMaxRememberedCredentials) verified.erase(verified.begin());
    verified.insert(key);
  }

  bool FailedSince(const std::string& key, Clock::time_point since) const {  // mu held
    const auto it = failed.find(key);
    return it != failed.end() && it->second > since;
  }

  void AddFailed(const std::string& key, Clock::time_point now) {  // mu held
    if (failed.size() >= kMaxRememberedFailures) {
      absl::erase_if(failed, [&](const auto& entry) { return entry.second <= now - kFailureMemory; });
    }
    if (failed.size() >= kMaxRememberedFailures) failed.erase(failed.begin());
    failed.insert_or_assign(key, now);
  }
};

std::optional<Credentials> ParseBasicAuthorization(absl::string_view header_value) {
  if (header_value.size() < 6 || !absl::EqualsIgnoreCase(header_value.substr(0, 5), "Basic") ||
      header_value[5] != ' ') {
    return std::nullopt;
  }
  absl::string_view encoded = header_value.substr(6);
  while (!encoded.empty() && encoded.front() == ' ') encoded.remove_prefix(1);
  std::string decoded;
  if (!absl::Base64Unescape(encoded, &decoded)) return std::nullopt;
  const size_t colon = decoded.find(':');
  if (colon == std::string::npos) return std::nullopt;
  return Credentials{decoded.substr(0, colon), decoded.substr(colon + 1)};
}

BasicAuth::BasicAuth() : cache_(std::make_unique<Cache>()) {}
BasicAuth::BasicAuth(BasicAuth&&) noexcept = default;
BasicAuth& BasicAuth::operator=(BasicAuth&&) noexcept = default;
BasicAuth::~BasicAuth() = default;

BasicAuth BasicAuth::FromWebConfig(const WebConfig& config) {
  BasicAuth auth;
  int max_cost = 0;
  for (const auto& [user, hash] : config.basic_auth_users) {
    auth.users_[user] = User{hash, false};
    max_cost = std::max(max_cost, BcryptCost(hash));
  }
  if (max_cost > 0) {
    // The salt need not be secret: the dummy hash only has to cost as much as a real one.
    const std::array<char, 16> salt_bytes{};
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    if (crypt_gensalt_rn("$2b$", static_cast<unsigned long>(max_cost), salt_bytes.data(), salt_bytes.size(),
                         setting, sizeof setting) != nullptr) {
      auth.dummy_hash_ = setting;
    }
  }
  return auth;
}

absl::StatusOr<BasicAuth> BasicAuth::FromLegacyFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallRegularFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat("basic auth file ", path, ": ", text.status().message()));
  }
  BasicAuth auth;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_number;
    absl::ConsumeSuffix(&line, "\r");
    if (absl::StripAsciiWhitespace(line).empty() || line[0] == '#') continue;
    const size_t colon = line.find(':');
    const std::string where = absl::StrCat("basic auth file ", path, ": line ", line_number);
    if (colon == absl::string_view::npos) return absl::InvalidArgumentError(where + " is not user:password");
    if (colon == 0) return absl::InvalidArgumentError(where + " has an empty user name");
    const std::string user(line.substr(0, colon));
    if (!auth.users_.emplace(user, User{std::string(line.substr(colon + 1)), true}).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, " repeats user \"", user, "\""));
    }
  }
  if (auth.users_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("basic auth file ", path, " holds no user:password line"));
  }
  return auth;
}

bool BasicAuth::enabled() const { return !users_.empty(); }

std::optional<std::string> BasicAuth::CacheKeyOf(const Credentials& credentials) const {
  const auto it = users_.find(credentials.user);
  if (it == users_.end()) {
    if (dummy_hash_.empty()) return std::nullopt;
    return CacheKey(credentials, kUnknownUser);
  }
  if (it->second.plaintext) return std::nullopt;
  return CacheKey(credentials, it->second.secret);
}

bool BasicAuth::VerifiedBefore(const Credentials& credentials) const {
  const auto it = users_.find(credentials.user);
  if (it != users_.end() && it->second.plaintext) return ConstantTimeEquals(it->second.secret, credentials.password);
  const std::optional<std::string> key = CacheKeyOf(credentials);
  if (!key) return false;
  std::lock_guard lock(cache_->mu);
  return cache_->verified.contains(*key);
}

bool BasicAuth::FailedBefore(const Credentials& credentials) const {
  const std::optional<std::string> key = CacheKeyOf(credentials);
  if (!key) return false;
  const Clock::time_point since = Clock::now() - kFailureMemory;
  std::lock_guard lock(cache_->mu);
  return cache_->FailedSince(*key, since);
}

bool BasicAuth::Verify(const Credentials& credentials) {
  const auto it = users_.find(credentials.user);
  if (it != users_.end() && it->second.plaintext) return ConstantTimeEquals(it->second.secret, credentials.password);
  const std::optional<std::string> key = CacheKeyOf(credentials);
  if (!key) return false;  // an unknown user, and no bcrypt user whose cost to imitate
  {
    std::lock_guard lock(cache_->mu);
    if (cache_->verified.contains(*key)) return true;
    if (cache_->FailedSince(*key, Clock::now() - kFailureMemory)) return false;
  }
  const bool known = it != users_.end();
  const std::string& hash = known ? it->second.secret : dummy_hash_;
  // Against the dummy setting, crypt's result never equals it: unknown users fail at the full cost.
  const bool verified = CryptMatches(credentials.password, hash, hash) && known &&
                        credentials.password.find('\0') == std::string::npos;
  std::lock_guard lock(cache_->mu);
  if (verified) {
    cache_->AddVerified(*key);
  } else {
    cache_->AddFailed(*key, Clock::now());
  }
  return verified;
}

void BasicAuth::InheritVerified(const BasicAuth& previous) {
  if (&previous == this || previous.cache_ == nullptr) return;
  // Copied out first, so that no thread ever holds both mutexes.
  absl::flat_hash_set<std::string> verified;
  absl::flat_hash_map<std::string, Clock::time_point> failed;
  {
    std::lock_guard lock(previous.cache_->mu);
    verified = previous.cache_->verified;
    failed = previous.cache_->failed;
  }
  const Clock::time_point since = Clock::now() - kFailureMemory;
  std::lock_guard lock(cache_->mu);
  for (const std::string& key : verified) {
    if (cache_->verified.size() >= kMaxRememberedCredentials) break;
    cache_->verified.insert(key);
  }
  for (const auto& [key, when] : failed) {
    if (cache_->failed.size() >= kMaxRememberedFailures) break;
    if (when > since) cache_->failed.try_emplace(key, when);
  }
}

}  // namespace shmetrics::exporter
