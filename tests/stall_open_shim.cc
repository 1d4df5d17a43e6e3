// LD_PRELOAD shim for tests: opening a file whose name starts with
// "shmetrics.stall." blocks while the file named by
// SHMETRICS_TEST_STALL_WHILE exists (at most 60 s), as an open on a hung
// network file system would; when it does, it first creates that name plus
// ".entered", so a test knows that a scan is stuck, and when. Everything else goes
// straight to libc.
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

bool NamesStallFile(const char* path) {
  const char* slash = strrchr(path, '/');
  const char* name = slash != nullptr ? slash + 1 : path;
  return strncmp(name, "shmetrics.stall.", 16) == 0;
}

void StallIfAsked(const char* path) {
  const char* control = getenv("SHMETRICS_TEST_STALL_WHILE");
  if (control == nullptr || path == nullptr || !NamesStallFile(path)) return;
  struct stat st;
  if (stat(control, &st) != 0) return;
  char entered[4096];
  if (snprintf(entered, sizeof entered, "%s.entered", control) < int(sizeof entered)) {
    static auto next_open = reinterpret_cast<int (*)(const char*, int, ...)>(dlsym(RTLD_NEXT, "open"));
    const int fd = next_open(entered, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
  }
  for (int i = 0; i < 6000 && stat(control, &st) == 0; ++i) usleep(10000);
}

template <typename Fn>
Fn Next(const char* symbol) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, symbol));
}

mode_t ModeOf(int flags, va_list args) { return (flags & (O_CREAT | O_TMPFILE)) != 0 ? va_arg(args, mode_t) : 0; }

}  // namespace

extern "C" {

int open(const char* path, int flags, ...) {
  va_list args;
  va_start(args, flags);
  const mode_t mode = ModeOf(flags, args);
  va_end(args);
  StallIfAsked(path);
  static auto next = Next<int (*)(const char*, int, ...)>("open");
  return next(path, flags, mode);
}

int open64(const char* path, int flags, ...) {
  va_list args;
  va_start(args, flags);
  const mode_t mode = ModeOf(flags, args);
  va_end(args);
  StallIfAsked(path);
  static auto next = Next<int (*)(const char*, int, ...)>("open64");
  return next(path, flags, mode);
}

int openat(int dir_fd, const char* path, int flags, ...) {
  va_list args;
  va_start(args, flags);
  const mode_t mode = ModeOf(flags, args);
  va_end(args);
  StallIfAsked(path);
  static auto next = Next<int (*)(int, const char*, int, ...)>("openat");
  return next(dir_fd, path, flags, mode);
}

int openat64(int dir_fd, const char* path, int flags, ...) {
  va_list args;
  va_start(args, flags);
  const mode_t mode = ModeOf(flags, args);
  va_end(args);
  StallIfAsked(path);
  static auto next = Next<int (*)(int, const char*, int, ...)>("openat64");
  return next(dir_fd, path, flags, mode);
}

}  // extern "C"
