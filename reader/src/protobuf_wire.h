// Protocol buffers wire format, the little of it the exposition needs:
// varints, tags, fixed 64-bit doubles, length-delimited fields. Messages
// are written straight into the output; a nested message's length is a
// one-byte placeholder, widened in place when the message is closed (a
// memmove of that message only). Internal header.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "absl/strings/string_view.h"

namespace shmetrics::reader::proto {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2 };

inline size_t VarintSize(uint64_t value) {
  size_t size = 1;
  while (value >= 0x80) {
    value >>= 7;
    ++size;
  }
  return size;
}

inline void AppendVarint(std::string* out, uint64_t value) {
  char buffer[10];
  size_t n = 0;
  while (value >= 0x80) {
    buffer[n++] = static_cast<char>(value | 0x80);
    value >>= 7;
  }
  buffer[n++] = static_cast<char>(value);
  out->append(buffer, n);
}

inline void AppendTag(std::string* out, uint32_t field, WireType type) { AppendVarint(out, (field << 3) | type); }

inline void AppendVarintField(std::string* out, uint32_t field, uint64_t value) {
  AppendTag(out, field, kVarint);
  AppendVarint(out, value);
}

// sint32 / sint64: zigzag, so small negative numbers stay short.
inline uint64_t ZigZag(int64_t value) {
  return (static_cast<uint64_t>(value) << 1) ^ static_cast<uint64_t>(value >> 63);
}

inline void AppendDoubleField(std::string* out, uint32_t field, double value) {
  AppendTag(out, field, kFixed64);
  char bytes[8];
  std::memcpy(bytes, &value, 8);  // little-endian on every machine we build for
  out->append(bytes, 8);
}

inline void AppendStringField(std::string* out, uint32_t field, absl::string_view value) {
  AppendTag(out, field, kLengthDelimited);
  AppendVarint(out, value.size());
  out->append(value.data(), value.size());
}

// Opens a length-delimited field (`field` 0: a bare length prefix, as the
// delimited stream puts before each message); returns what Close needs.
inline size_t Open(std::string* out, uint32_t field) {
  if (field != 0) AppendTag(out, field, kLengthDelimited);
  out->push_back('\0');
  return out->size() - 1;
}

// Writes the length of the message opened at `mark`.
inline void Close(std::string* out, size_t mark) {
  const uint64_t length = out->size() - mark - 1;
  const size_t size = VarintSize(length);
  if (size > 1) out->insert(mark + 1, size - 1, '\0');
  uint64_t value = length;
  for (size_t i = 0; i < size; ++i, value >>= 7) {
    (*out)[mark + i] = static_cast<char>((value & 0x7f) | (i + 1 < size ? 0x80 : 0));
  }
}

}  // namespace shmetrics::reader::proto
