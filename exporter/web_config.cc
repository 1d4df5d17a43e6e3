#include "web_config.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"

namespace shmetrics::exporter {
namespace {

// A key of exporter-toolkit's format, and why shmetrics-exporter refuses it
// (nullptr: implemented, or harmless to accept).
struct Key {
  const char* name;
  const char* unsupported;
};

constexpr Key kTopKeys[] = {
    {"tls_server_config", nullptr},
    {"basic_auth_users", nullptr},
    {"http_server_config", nullptr},
    {"rate_limit", "put a rate-limiting proxy in front of the exporter"},
};
constexpr Key kTlsKeys[] = {
    {"cert_file", nullptr},
    {"key_file", nullptr},
    {"client_auth_type", nullptr},
    {"client_ca_file", nullptr},
    {"min_version", nullptr},
    {"max_version", nullptr},
    {"prefer_server_cipher_suites", nullptr},  // Go has ignored it since 1.18
    {"cert", "put the PEM certificate in a file and name it in cert_file"},
    {"key", "put the PEM key in a file and name it in key_file"},
    {"client_ca", "put the PEM CA certificates in a file and name it in client_ca_file"},
    {"cipher_suites", "OpenSSL's default cipher suites are used"},
    {"curve_preferences", "OpenSSL's default groups are used"},
    // Ignoring it would let in clients it was written to keep out.
    {"client_allowed_sans", "client certificates are not matched by SAN; give the allowed clients a CA of their own "
                            "and name it in client_ca_file"},
};
constexpr Key kHttpKeys[] = {
    {"http2", nullptr},  // a permission, not a requirement: clients fall back to HTTP/1.1
    {"headers", "the exporter sets its own response headers"},
};

constexpr std::pair<const char*, ClientAuth> kClientAuthNames[] = {
    {"NoClientCert", ClientAuth::kNoClientCert},
    {"RequestClientCert", ClientAuth::kRequestClientCert},
    {"RequireAnyClientCert", ClientAuth::kRequireAnyClientCert},
    {"RequireClientCert", ClientAuth::kRequireAnyClientCert},  // exporter-toolkit's older name
    {"VerifyClientCertIfGiven", ClientAuth::kVerifyClientCertIfGiven},
    {"RequireAndVerifyClientCert", ClientAuth::kRequireAndVerifyClientCert},
};
constexpr std::pair<const char*, int> kTlsVersionNames[] = {
    {"TLS10", TLS1_VERSION}, {"TLS11", TLS1_1_VERSION}, {"TLS12", TLS1_2_VERSION}, {"TLS13", TLS1_3_VERSION}};

const char* VersionName(int version) {
  for (const auto& [name, v] : kTlsVersionNames) {
    if (v == version) return name;
  }
  return "?";
}

// "$2a$", "$2b$" or "$2y$", a two-digit cost, "$", then 22 characters of
// salt and 31 of hash in bcrypt's base64 alphabet. The cost's range is
// checked apart, for a message of its own.
bool LooksLikeBcrypt(absl::string_view hash) {
  if (hash.size() != 60 || hash.substr(0, 2) != "$2" || hash[3] != '$' || hash[6] != '$') return false;
  if (hash[2] != 'a' && hash[2] != 'b' && hash[2] != 'y') return false;
  if (!absl::ascii_isdigit(hash[4]) || !absl::ascii_isdigit(hash[5])) return false;
  for (char c : hash.substr(7)) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '/') return false;
  }
  return true;
}

using Entries = std::vector<std::pair<std::string, YAML::Node>>;

class Parser {
 public:
  explicit Parser(const std::string& path) : path_(path), base_directory_(std::filesystem::path(path).parent_path()) {}

  absl::StatusOr<WebConfig> Parse(absl::string_view text) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& e) {
      if (e.mark.is_null()) return Error(absl::StrCat("YAML syntax error: ", e.msg));
      return Error(absl::StrCat("YAML syntax error at line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ",
                                e.msg));
    }
    WebConfig config;
    if (!root.IsNull() && !root.IsMap()) return Error("the file must be a YAML mapping of keys to settings");
    absl::StatusOr<Entries> top = CheckedEntries(root, "", kTopKeys);
    if (!top.ok()) return top.status();
    for (const auto& [key, value] : *top) {
      absl::Status status;
      if (key == "tls_server_config" && !value.IsNull()) {
        config.tls.emplace();
        status = ParseTls(value, *config.tls);
      } else if (key == "basic_auth_users") {
        status = ParseUsers(value, config.basic_auth_users);
      } else if (key == "http_server_config") {
        status = ParseHttp(value);
      }
      if (!status.ok()) return status;
    }
    return config;
  }

 private:
  absl::Status Error(absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat("web config ", path_, ": ", message));
  }

  // A mapping's entries in file order, once its keys are checked: strings,
  // each once, each one of `keys` and implemented. Empty `keys`: any key.
  // `where` is the mapping's own dotted path ("" for the top level).
  absl::StatusOr<Entries> CheckedEntries(const YAML::Node& node, const std::string& where,
                                         absl::Span<const Key> keys) const {
    Entries entries;
    if (node.IsNull()) return entries;
    if (!node.IsMap()) return Error(absl::StrCat(where, " must be a mapping of keys to settings"));
    std::set<std::string> seen;
    for (const auto& entry : node) {
      if (!entry.first.IsScalar()) {
        return Error(absl::StrCat("a key in ", where.empty() ? "the file" : where, " is not a string"));
      }
      const std::string& key = entry.first.Scalar();
      const std::string dotted = where.empty() ? key : absl::StrCat(where, ".", key);
      if (!seen.insert(key).second) return Error(absl::StrCat("duplicate key \"", dotted, "\""));
      if (!keys.empty()) {
        const Key* known = nullptr;
        for (const Key& k : keys) {
          if (key == k.name) known = &k;
        }
        if (known == nullptr) return Error(absl::StrCat("unknown key \"", dotted, "\""));
        if (known->unsupported != nullptr) {
          return Error(absl::StrCat(dotted, " is not supported by shmetrics-exporter (", known->unsupported, ")"));
        }
      }
      entries.emplace_back(key, entry.second);
    }
    return entries;
  }

  // A scalar's text; null reads as "".
  absl::StatusOr<std::string> String(const YAML::Node& value, absl::string_view name) const {
    if (value.IsNull()) return std::string();
    if (!value.IsScalar()) return Error(absl::StrCat(name, " must be a string"));
    return value.Scalar();
  }

  absl::Status CheckBool(const YAML::Node& value, absl::string_view name) const {
    bool ignored = false;
    if (!value.IsScalar() || !YAML::convert<bool>::decode(value, ignored)) {
      return Error(absl::StrCat(name, " must be true or false"));
    }
    return absl::OkStatus();
  }

  std::string Resolve(const std::string& file) const {
    if (file.empty() || base_directory_.empty() || file[0] == '/') return file;
    return (base_directory_ / file).lexically_normal().string();
  }

  absl::StatusOr<int> TlsVersion(const YAML::Node& value, absl::string_view name) const {
    absl::StatusOr<std::string> text = String(value, name);
    if (!text.ok()) return text.status();
    for (const auto& [version_name, version] : kTlsVersionNames) {
      if (*text != version_name) continue;
      if (version < TLS1_2_VERSION) {
        return Error(absl::StrCat(name, " ", version_name,
                                  " is refused: OpenSSL 3 no longer negotiates TLS 1.0 or 1.1 at its default "
                                  "security level; use TLS12 or TLS13"));
      }
      return version;
    }
    return Error(absl::StrCat(name, " \"", *text, "\" is not one of TLS12, TLS13"));
  }

  absl::Status ParseTls(const YAML::Node& node, TlsSettings& tls) const {
    absl::StatusOr<Entries> entries = CheckedEntries(node, "tls_server_config", kTlsKeys);
    if (!entries.ok()) return entries.status();
    bool max_version_set = false;
    for (const auto& [key, value] : *entries) {
      const std::string name = "tls_server_config." + key;
      if (key == "prefer_server_cipher_suites") {
        if (absl::Status status = CheckBool(value, name); !status.ok()) return status;
      } else if (key == "min_version" || key == "max_version") {
        absl::StatusOr<int> version = TlsVersion(value, name);
        if (!version.ok()) return version.status();
        (key == "min_version" ? tls.min_version : tls.max_version) = *version;
        max_version_set |= key == "max_version";
      } else {
        absl::StatusOr<std::string> text = String(value, name);
        if (!text.ok()) return text.status();
        if (key == "cert_file") tls.cert_file = Resolve(*text);
        if (key == "key_file") tls.key_file = Resolve(*text);
        if (key == "client_ca_file") tls.client_ca_file = Resolve(*text);
        if (key == "client_auth_type" && !text->empty()) {
          bool known = false;
          for (const auto& [auth_name, auth] : kClientAuthNames) {
            if (*text == auth_name) {
              tls.client_auth = auth;
              known = true;
            }
          }
          if (!known) {
            return Error(absl::StrCat(name, " \"", *text, "\" is not one of NoClientCert, RequestClientCert, ",
                                      "RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"));
          }
        }
      }
    }
    if (tls.cert_file.empty()) return Error("tls_server_config.cert_file is required");
    if (tls.key_file.empty()) return Error("tls_server_config.key_file is required");
    const bool verifies = tls.client_auth == ClientAuth::kVerifyClientCertIfGiven ||
                          tls.client_auth == ClientAuth::kRequireAndVerifyClientCert;
    if (verifies && tls.client_ca_file.empty()) {
      return Error("tls_server_config.client_ca_file is required with client_auth_type " +
                   std::string(tls.client_auth == ClientAuth::kVerifyClientCertIfGiven ? "VerifyClientCertIfGiven"
                                                                                       : "RequireAndVerifyClientCert"));
    }
    if (!tls.client_ca_file.empty() && tls.client_auth == ClientAuth::kNoClientCert) {
      return Error("tls_server_config.client_ca_file is set but client_auth_type is NoClientCert; set "
                   "client_auth_type: RequireAndVerifyClientCert");
    }
    if (max_version_set && tls.min_version > tls.max_version) {
      return Error(absl::StrCat("tls_server_config.min_version ", VersionName(tls.min_version),
                                " is above max_version ", VersionName(tls.max_version)));
    }
    return absl::OkStatus();
  }

  absl::Status ParseUsers(const YAML::Node& node, std::vector<std::pair<std::string, std::string>>& users) const {
    absl::StatusOr<Entries> entries = CheckedEntries(node, "basic_auth_users", {});
    if (!entries.ok()) return entries.status();
    for (const auto& [user, value] : *entries) {
      if (user.find(':') != std::string::npos) {
        return Error(
            absl::StrCat("basic_auth_users: user name \"", user, "\" contains ':', which basic auth cannot carry"));
      }
      // The value may be a plaintext password: never put it in a message.
      if (!value.IsScalar() || !LooksLikeBcrypt(value.Scalar())) {
        return Error(absl::StrCat("basic_auth_users: the password of user \"", user,
                                  "\" is not a bcrypt hash ($2a$, $2b$ or $2y$, a cost, 53 characters); "
                                  "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'"));
      }
      const int cost = (value.Scalar()[4] - '0') * 10 + (value.Scalar()[5] - '0');
      if (cost < 4) {
        return Error(absl::StrCat("basic_auth_users: the bcrypt hash of user \"", user, "\" has cost ", cost,
                                  ", below bcrypt's minimum of 4"));
      }
      if (cost > kMaxBcryptCost) {
        return Error(absl::StrCat("basic_auth_users: the bcrypt hash of user \"", user, "\" has cost ", cost,
                                  "; costs above ", kMaxBcryptCost,
                                  " are refused, as every check would take seconds or more (10 to 12 is usual)"));
      }
      users.emplace_back(user, value.Scalar());
    }
    return absl::OkStatus();
  }

  absl::Status ParseHttp(const YAML::Node& node) const {
    absl::StatusOr<Entries> entries = CheckedEntries(node, "http_server_config", kHttpKeys);
    if (!entries.ok()) return entries.status();
    for (const auto& [key, value] : *entries) {
      if (absl::Status status = CheckBool(value, "http_server_config." + key); !status.ok()) return status;
    }
    return absl::OkStatus();
  }

  std::string path_;
  std::filesystem::path base_directory_;
};

absl::Status TooLarge() {
  return absl::InvalidArgumentError(absl::StrCat("larger than the limit of ", kMaxWebConfigFileBytes >> 20, " MiB"));
}

absl::Status ErrnoError(int error) { return absl::Status(absl::ErrnoToStatusCode(error), std::strerror(error)); }

// An open descriptor of `path`, once it is known to be a regular file of at
// most kMaxWebConfigFileBytes. O_NONBLOCK: opening a FIFO would otherwise
// wait for a writer (at start, or on the SIGHUP thread).
absl::StatusOr<int> OpenSmallRegularFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoError(errno);
  struct stat st;
  absl::Status problem;
  if (fstat(fd, &st) != 0) {
    problem = ErrnoError(errno);
  } else if (S_ISDIR(st.st_mode)) {
    problem = ErrnoError(EISDIR);
  } else if (!S_ISREG(st.st_mode)) {
    problem = absl::InvalidArgumentError("not a regular file");
  } else if (static_cast<uint64_t>(st.st_size) > kMaxWebConfigFileBytes) {
    problem = TooLarge();
  }
  if (problem.ok()) return fd;
  ::close(fd);
  return problem;
}

}  // namespace

absl::StatusOr<WebConfig> ParseWebConfig(absl::string_view yaml_text, const std::string& path) {
  return Parser(path).Parse(yaml_text);
}

absl::StatusOr<std::string> ReadSmallRegularFile(const std::string& path) {
  absl::StatusOr<int> fd = OpenSmallRegularFile(path);
  if (!fd.ok()) return fd.status();
  // One byte more than the limit, to notice a file that grew since fstat.
  std::string text(kMaxWebConfigFileBytes + 1, '\0');
  size_t size = 0;
  while (size < text.size()) {
    const ssize_t n = ::read(*fd, text.data() + size, text.size() - size);
    if (n == 0) break;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int read_errno = errno;
      ::close(*fd);
      return ErrnoError(read_errno);
    }
    size += static_cast<size_t>(n);
  }
  ::close(*fd);
  if (size > kMaxWebConfigFileBytes) return TooLarge();
  text.resize(size);
  return text;
}

absl::StatusOr<WebConfig> LoadWebConfig(const std::string& path) {
  absl::StatusOr<std::string> text = ReadSmallRegularFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat("web config ", path, ": ", text.status().message()));
  }
  absl::StatusOr<WebConfig> config = ParseWebConfig(*text, path);
  if (!config.ok() || !config->tls) return config;
  const std::pair<const char*, const std::string*> files[] = {{"cert_file", &config->tls->cert_file},
                                                              {"key_file", &config->tls->key_file},
                                                              {"client_ca_file", &config->tls->client_ca_file}};
  for (const auto& [key, file] : files) {
    if (file->empty()) continue;
    absl::StatusOr<int> fd = OpenSmallRegularFile(*file);
    if (!fd.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("web config ", path, ": tls_server_config.", key, " ", *file, ": ", fd.status().message()));
    }
    ::close(*fd);
  }
  return config;
}

}  // namespace shmetrics::exporter
