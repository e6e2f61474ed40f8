/* exec_file.c - the "file" type: read, sha256 or stat a file under files.root.
 *
 * Confinement is by construction, not by string checks alone: the path is
 * walked one component at a time with openat(..., O_NOFOLLOW) from a
 * descriptor of the root, so no symlink is ever followed and ".." never
 * reaches the kernel. The blocking I/O runs on the thread pool.
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon.h"
#include "encode.h"
#include "executor.h"
#include "threadpool.h"

#define MAX_PATH_BYTES 4096
#define CHUNK (64 * 1024)

enum file_op { OP_READ, OP_SHA256, OP_STAT };

struct file_state {
    struct pool_task task;      /* first: the pool hands it back to us */
    struct job *job;
    char *path;
    enum file_op op;
    /* Copied on the loop at start(): the config may be reloaded meanwhile. */
    char *root;
    int64_t max_bytes;
    /* Written by the worker, read on the loop in done(). */
    struct job_error err;
    json_t *result;
};

static int file_parse(struct job *job, const json_t *spec, struct job_error *err)
{
    static const char *const fields[] = {"path", "op", NULL};
    if (spec_check_fields(spec, "file", fields, err))
        return -1;
    if (!job->d->cfg.files_root || !*job->d->cfg.files_root) {
        job_error_set(err, ERR_UNAVAILABLE, "file jobs are off: files.root is not set");
        return -1;
    }
    json_t *path = json_object_get(spec, "path");
    json_t *op = json_object_get(spec, "op");
    const char *p = json_string_value(path);
    size_t len = json_string_length(path);
    if (!p || len == 0 || len > MAX_PATH_BYTES || strlen(p) != len) {
        job_error_set(err, ERR_INVALID_JOB, "file.path: required, a string of 1..%d bytes",
                      MAX_PATH_BYTES);
        return -1;
    }
    enum file_op fop = OP_READ;
    if (op) {
        const char *o = json_string_value(op);
        if (o && !strcmp(o, "read"))
            fop = OP_READ;
        else if (o && !strcmp(o, "sha256"))
            fop = OP_SHA256;
        else if (o && !strcmp(o, "stat"))
            fop = OP_STAT;
        else {
            job_error_set(err, ERR_INVALID_JOB, "file.op: must be read, sha256 or stat");
            return -1;
        }
    }
    if (p[0] == '/') {
        job_error_set(err, ERR_FORBIDDEN, "file.path: absolute paths are refused");
        return -1;
    }
    for (const char *c = p; *c;) {
        size_t n = strcspn(c, "/");
        if (n == 2 && c[0] == '.' && c[1] == '.') {
            job_error_set(err, ERR_FORBIDDEN, "file.path: \"..\" is refused");
            return -1;
        }
        c += n;
        while (*c == '/')
            c++;
    }
    struct file_state *st = calloc(1, sizeof(*st));
    if (!st || !(st->path = strdup(p))) {
        free(st);
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return -1;
    }
    st->op = fop;
    st->job = job;
    job->exec_state = st;
    return 0;
}

/* ---- on the worker thread -------------------------------------------------- */

static void fail_errno(struct file_state *st, int e, const char *what)
{
    if (e == ELOOP)
        job_error_set(&st->err, ERR_FORBIDDEN, "%s: path leaves files.root or is a symlink",
                      st->path);
    else
        job_error_set(&st->err, ERR_IO_ERROR, "%s: %s: %s", st->path, what, strerror(e));
}

/* Open the path beneath the root; FLAGS for the last component. Returns an
 * fd, or -1 with st->err set. */
static int open_beneath(struct file_state *st, int flags)
{
    int dir = open(st->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        job_error_set(&st->err, ERR_UNAVAILABLE, "files.root %s: %s", st->root, strerror(errno));
        return -1;
    }
    char *copy = strdup(st->path), *save = NULL;
    char *comp = copy ? strtok_r(copy, "/", &save) : NULL;
    int fd = -1;
    while (comp) {
        char *next = strtok_r(NULL, "/", &save);
        int f = next ? O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
                     : flags | O_NOFOLLOW | O_CLOEXEC;
        fd = openat(dir, comp, f);
        if (fd < 0) {
            int e = errno;
            struct stat sb;
            /* O_NOFOLLOW|O_DIRECTORY on a symlink says ENOTDIR: name it. */
            if ((e == ENOTDIR || e == ELOOP) && fstatat(dir, comp, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISLNK(sb.st_mode))
                e = ELOOP;
            fail_errno(st, e, "open");
            break;
        }
        close(dir);
        dir = -1;
        if (!next)
            break;
        dir = fd;
        fd = -1;
        comp = next;
    }
    if (!copy)
        job_error_set(&st->err, ERR_INTERNAL, "out of memory");
    if (dir >= 0)
        close(dir);
    free(copy);
    return fd;
}

static void do_stat(struct file_state *st)
{
    int fd = open_beneath(st, O_PATH);
    struct stat sb;
    if (fd < 0)
        return;
    if (fstat(fd, &sb)) {
        fail_errno(st, errno, "stat");
    } else if (S_ISLNK(sb.st_mode)) {
        fail_errno(st, ELOOP, "stat");
    } else {
        char mode[8];
        snprintf(mode, sizeof(mode), "%04o", (unsigned)(sb.st_mode & 07777));
        const char *type = S_ISREG(sb.st_mode) ? "file" : S_ISDIR(sb.st_mode) ? "directory"
                                                                              : "other";
        st->result = json_pack("{s:s, s:I, s:s, s:s, s:I}", "path", st->path, "size",
                               (json_int_t)sb.st_size, "mode", mode, "type", type, "mtime_ms",
                               (json_int_t)sb.st_mtim.tv_sec * 1000 +
                                   sb.st_mtim.tv_nsec / 1000000);
    }
    close(fd);
}

/* A regular file, opened without blocking on a FIFO or device. */
static int open_regular(struct file_state *st, struct stat *sb)
{
    int fd = open_beneath(st, O_RDONLY | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -1;
    if (fstat(fd, sb)) {
        fail_errno(st, errno, "stat");
    } else if (!S_ISREG(sb->st_mode)) {
        job_error_set(&st->err, ERR_IO_ERROR, "%s: not a regular file", st->path);
    } else {
        return fd;
    }
    close(fd);
    return -1;
}

/* Has the runner stopped this job (timeout, cancel, shutdown)? Workers look
 * between chunks of I/O, so a stop waits for one chunk at most
 * (doc/threads.md), not for a whole file on a slow filesystem. */
static bool stopped(const struct file_state *st)
{
    return atomic_load(&st->job->cancel_flag) != 0;
}

/* Read FD into BUF (CAP bytes) one CHUNK at a time, until end of file or CAP.
 * *LEN: the bytes read. 0, or -1 with errno set, or 1 when the job was
 * stopped first: one read() of a whole 1 GiB file does not look at the
 * cancel flag for seconds. */
static int read_chunks(struct file_state *st, int fd, char *buf, size_t cap, size_t *len)
{
    *len = 0;
    while (*len < cap) {
        if (stopped(st))
            return 1;
        size_t want = cap - *len < CHUNK ? cap - *len : CHUNK;
        ssize_t n = read(fd, buf + *len, want);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        *len += (size_t)n;
    }
    return 0;
}

static void do_read(struct file_state *st)
{
    struct stat sb;
    int fd = open_regular(st, &sb);
    if (fd < 0)
        return;
    if (sb.st_size > st->max_bytes) {
        job_error_set(&st->err, ERR_TOO_LARGE, "%s: %lld bytes, files.max_bytes is %lld",
                      st->path, (long long)sb.st_size, (long long)st->max_bytes);
        close(fd);
        return;
    }
    /* One byte more than the size: reading it means the file grew. */
    size_t cap = (size_t)sb.st_size + 1, len = 0;
    char *buf = malloc(cap);
    int rc = buf ? read_chunks(st, fd, buf, cap, &len) : 0;
    if (!buf) {
        job_error_set(&st->err, ERR_INTERNAL, "out of memory");
    } else if (rc < 0) {
        fail_errno(st, errno, "read");
    } else if (rc > 0 || stopped(st)) {
        /* Stopped: no result, and no encoding of what was read (a text
         * check or base64 of up to files.max_bytes); file_done() says
         * cancelled and the runner gives its own reason. */
    } else if (len > (size_t)sb.st_size) {
        job_error_set(&st->err, ERR_IO_ERROR, "%s: file grew while being read", st->path);
    } else {
        st->result = json_pack("{s:s, s:I}", "path", st->path, "size", (json_int_t)len);
        if (json_set_text_or_base64(st->result, "content", "content_base64", buf, len)) {
            json_decref(st->result);
            st->result = NULL;
            job_error_set(&st->err, ERR_INTERNAL, "out of memory");
        }
    }
    free(buf);
    close(fd);
}

static void do_sha256(struct file_state *st)
{
    struct stat sb;
    int fd = open_regular(st, &sb);
    if (fd < 0)
        return;
    unsigned char *buf = malloc(CHUNK), md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    long long total = 0;
    ssize_t n = 0;
    if (buf && ctx && EVP_DigestInit_ex2(ctx, EVP_sha256(), NULL)) {
        while ((n = read(fd, buf, CHUNK)) > 0) {
            if (stopped(st))
                break;
            EVP_DigestUpdate(ctx, buf, (size_t)n);
            total += n;
        }
        if (n < 0) {
            fail_errno(st, errno, "read");
        } else if (n == 0 && EVP_DigestFinal_ex(ctx, md, &mdlen)) {
            char hex[2 * EVP_MAX_MD_SIZE + 1];
            hex_encode(md, mdlen, hex);
            st->result = json_pack("{s:s, s:I, s:s}", "path", st->path, "size",
                                   (json_int_t)total, "sha256", hex);
        }
    }
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
}

static void file_work(struct pool_task *task)
{
    struct file_state *st = (struct file_state *)task;
    switch (st->op) {
    case OP_READ: do_read(st); break;
    case OP_SHA256: do_sha256(st); break;
    case OP_STAT: do_stat(st); break;
    }
}

/* ---- on the loop ----------------------------------------------------------- */

static void file_done(struct pool_task *task)
{
    struct file_state *st = (struct file_state *)task;
    struct job *job = st->job;
    json_t *result = st->result;
    st->result = NULL;
    if (task->skipped || atomic_load(&job->cancel_flag)) {
        json_decref(result);
        job_fail(job, ERR_CANCELLED, "file job stopped");
    } else if (result) {
        job_succeed(job, result);
    } else if (st->err.code) {
        job_fail_with(job, &st->err);
    } else {
        job_fail(job, ERR_INTERNAL, "%s: no result", st->path);
    }
}

static void file_start(struct job *job)
{
    struct file_state *st = job->exec_state;
    free(st->root);
    st->root = strdup(job->d->cfg.files_root);
    st->max_bytes = job->d->cfg.files_max_bytes;
    memset(&st->err, 0, sizeof(st->err));
    st->task.work = file_work;
    st->task.done = file_done;
    st->task.cancel = &job->cancel_flag;
    st->task.owner = job_pool_owner(job);
    if (!st->root || !*st->root) {
        job_fail(job, ERR_UNAVAILABLE, "file jobs are off: files.root is not set");
        return;
    }
    if (threadpool_submit(job->d->pool, &st->task))
        job_fail(job, ERR_UNAVAILABLE, "thread pool queue is full");
}

/* The runner sets job->cancel_flag; a read or sha256 in progress stops at
 * the next chunk, and a task still queued leaves the queue at once (as
 * hash_cancel). */
static void file_cancel(struct job *job)
{
    struct file_state *st = job->exec_state;
    if (st && st->task.work)
        threadpool_cancel(job->d->pool, &st->task);
}

static void file_free(struct job *job)
{
    struct file_state *st = job->exec_state;
    if (!st)
        return;
    json_decref(st->result);
    free(st->path);
    free(st->root);
    free(st);
    job->exec_state = NULL;
}

const struct executor file_executor = {
    .type = "file",
    .parse = file_parse,
    .start = file_start,
    .cancel = file_cancel,
    .free = file_free,
};
