/* slow_read_shim.c - LD_PRELOAD for the file-job tests: a slow filesystem.
 *
 * A file whose name contains "slow" (SLOW_READ_MARK to change it), once
 * opened with openat(), is read at most SLOW_READ_CHUNK bytes (default
 * 65536) per read() call, and each call first sleeps SLOW_READ_MS (default
 * 100) ms: a network or FUSE filesystem that delivers one chunk at a time.
 * Every other descriptor passes through untouched. Built by the tests with
 * `cc -shared -fPIC`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 4096

static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static ssize_t (*real_read)(int, void *, size_t);
static int (*real_close)(int);
static atomic_bool slow_fd[MAX_FDS];
static const char *mark = "slow";
static long delay_ms = 100;
static size_t chunk = 65536;

/* Looked up once, before any thread starts. */
__attribute__((constructor)) static void init(void)
{
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_read = dlsym(RTLD_NEXT, "read");
    real_close = dlsym(RTLD_NEXT, "close");
    const char *s;
    if ((s = getenv("SLOW_READ_MARK")) && *s)
        mark = s;
    if ((s = getenv("SLOW_READ_MS")))
        delay_ms = atol(s);
    if ((s = getenv("SLOW_READ_CHUNK")) && atol(s) > 0)
        chunk = (size_t)atol(s);
}

static int remember(int fd, const char *path)
{
    if (fd >= 0 && fd < MAX_FDS)
        atomic_store(&slow_fd[fd], path && strstr(path, mark) != NULL);
    return fd;
}

static mode_t mode_of(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? va_arg(ap, mode_t) : 0;
}

int openat(int dir, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return remember(real_openat(dir, path, flags, mode), path);
}

int openat64(int dir, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    return remember(real_openat64(dir, path, flags, mode), path);
}

ssize_t read(int fd, void *buf, size_t count)
{
    if (fd >= 0 && fd < MAX_FDS && atomic_load(&slow_fd[fd])) {
        struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0)
            ;
        if (count > chunk)
            count = chunk;
    }
    return real_read(fd, buf, count);
}

int close(int fd)
{
    if (fd >= 0 && fd < MAX_FDS)
        atomic_store(&slow_fd[fd], false);
    return real_close(fd);
}
