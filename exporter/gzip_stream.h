// Incremental gzip (zlib's deflate with a gzip wrapper) for responses sent
// in pieces: memory is zlib's state (about 256 KiB) plus what one piece
// compresses to, whatever the body's size.
#pragma once

#include <zlib.h>

#include <string>

#include "absl/strings/string_view.h"

namespace shmetrics::exporter {

class GzipStream {
 public:
  GzipStream();
  ~GzipStream();
  GzipStream(const GzipStream&) = delete;
  GzipStream& operator=(const GzipStream&) = delete;

  bool ok() const { return ok_; }
  // Compresses `input` and appends what zlib emits to `out` (possibly
  // nothing yet). `finish`: the body ends here; the gzip trailer follows.
  // False (and ok() false) if zlib fails.
  bool Append(absl::string_view input, bool finish, std::string* out);

 private:
  z_stream stream_{};
  bool ok_ = false;
};

}  // namespace shmetrics::exporter
