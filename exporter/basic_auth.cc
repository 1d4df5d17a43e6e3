#include "basic_auth.h"

#include <crypt.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace shmetrics::exporter {
namespace {

constexpr size_t kMaxRememberedCredentials = 1024;

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

// What the cache remembers of accepted credentials: never the password itself.
std::string CacheKey(const Credentials& credentials, const std::string& hash) {
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
  mutable absl::Mutex mu;
  absl::flat_hash_set<std::string> keys ABSL_GUARDED_BY(mu);
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
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("basic auth file ", path, ": ", std::strerror(errno)));
  BasicAuth auth;
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (absl::StripAsciiWhitespace(line).empty() || line[0] == '#') continue;
    const size_t colon = line.find(':');
    const std::string where = absl::StrCat("basic auth file ", path, ": line ", line_number);
    if (colon == std::string::npos) return absl::InvalidArgumentError(where + " is not user:password");
    if (colon == 0) return absl::InvalidArgumentError(where + " has an empty user name");
    const std::string user = line.substr(0, colon);
    if (!auth.users_.emplace(user, User{line.substr(colon + 1), true}).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, " repeats user \"", user, "\""));
    }
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("basic auth file ", path, ": ", std::strerror(errno)));
  if (auth.users_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("basic auth file ", path, " holds no user:password line"));
  }
  return auth;
}

bool BasicAuth::enabled() const { return !users_.empty(); }

bool BasicAuth::VerifiedBefore(const Credentials& credentials) const {
  const auto it = users_.find(credentials.user);
  if (it == users_.end()) return false;
  if (it->second.plaintext) return ConstantTimeEquals(it->second.secret, credentials.password);
  const std::string key = CacheKey(credentials, it->second.secret);
  absl::MutexLock lock(&cache_->mu);
  return cache_->keys.contains(key);
}

bool BasicAuth::Verify(const Credentials& credentials) {
  const auto it = users_.find(credentials.user);
  const bool has_nul = credentials.password.find('\0') != std::string::npos;
  if (it == users_.end()) {
    if (!dummy_hash_.empty()) CryptMatches(credentials.password, dummy_hash_, dummy_hash_);
    return false;
  }
  const User& user = it->second;
  if (user.plaintext) return ConstantTimeEquals(user.secret, credentials.password);
  if (!CryptMatches(credentials.password, user.secret, user.secret) || has_nul) return false;
  const std::string key = CacheKey(credentials, user.secret);
  absl::MutexLock lock(&cache_->mu);
  if (cache_->keys.size() >= kMaxRememberedCredentials) cache_->keys.erase(cache_->keys.begin());
  cache_->keys.insert(key);
  return true;
}

}  // namespace shmetrics::exporter
