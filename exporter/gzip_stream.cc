#include "gzip_stream.h"

namespace shmetrics::exporter {

GzipStream::GzipStream() {
  // windowBits 15 + 16: a gzip wrapper rather than zlib's. Level 1: a
  // scrape is compressed once and read once; speed beats ratio.
  ok_ = deflateInit2(&stream_, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK;
}

GzipStream::~GzipStream() {
  if (ok_) deflateEnd(&stream_);
}

bool GzipStream::Append(absl::string_view input, bool finish, std::string* out) {
  if (!ok_) return false;
  stream_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
  stream_.avail_in = static_cast<uInt>(input.size());
  const int flush = finish ? Z_FINISH : Z_NO_FLUSH;
  while (true) {
    const size_t before = out->size();
    const size_t room = deflateBound(&stream_, stream_.avail_in) + 64;
    out->resize(before + room);
    stream_.next_out = reinterpret_cast<Bytef*>(out->data() + before);
    stream_.avail_out = static_cast<uInt>(room);
    const int rc = deflate(&stream_, flush);
    out->resize(before + room - stream_.avail_out);
    if (rc == Z_STREAM_END) return true;
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      ok_ = false;
      return false;
    }
    // Done with this input once zlib took it all and had room to spare.
    if (stream_.avail_in == 0 && stream_.avail_out != 0 && !finish) return true;
  }
}

}  // namespace shmetrics::exporter
