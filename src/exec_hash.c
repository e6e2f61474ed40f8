/* exec_hash.c - the "hash" type: iterated digests on the thread pool.
 *
 * The loop only parses and decodes; the iterations run on a pool thread,
 * which looks at the job's cancel flag every HASH_CANCEL_EVERY rounds, so a
 * timeout or cancel stops even a 10-million-round job almost at once.
 */
/* The low-level SHA-2 calls are deprecated in OpenSSL 3 but kept: they skip
 * the provider dispatch that makes each EVP round ~1.8x slower on the
 * 32/64-byte inputs of an iterated hash (see hash_rounds). */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "encode.h"
#include "exec_hash.h"
#include "executor.h"
#include "threadpool.h"

#define MAX_ITERATIONS 10000000L

struct hash_state {
    struct pool_task task;      /* first: the pool hands it back to us */
    struct job *job;
    const EVP_MD *md;
    unsigned char *data;
    size_t len;
    long iterations;
    /* Written by the worker, read on the loop in done(). */
    int outcome;                /* 0 ok, 1 cancelled, -1 error */
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int digest_len;
};

/* ---- pure parts ------------------------------------------------------------ */

static const char *const algorithm_names[] = {"sha256", "sha512", "sha1", "blake2b512"};
#define NALGORITHMS (sizeof(algorithm_names) / sizeof(algorithm_names[0]))
static EVP_MD *algorithms[NALGORITHMS];
static pthread_once_t algorithms_once = PTHREAD_ONCE_INIT;

static void fetch_algorithms(void)
{
    /* EVP_MD_fetch once: implicit fetches by name cost a lookup per digest. */
    static const char *const openssl_names[] = {"SHA256", "SHA512", "SHA1", "BLAKE2B-512"};
    for (size_t i = 0; i < NALGORITHMS; i++)
        algorithms[i] = EVP_MD_fetch(NULL, openssl_names[i], NULL);
}

const EVP_MD *hash_algorithm(const char *name)
{
    pthread_once(&algorithms_once, fetch_algorithms);
    for (size_t i = 0; i < NALGORITHMS; i++)
        if (!strcmp(name, algorithm_names[i]))
            return algorithms[i];
    return NULL;
}

/* Rounds 2..N for SHA-256 and SHA-512, on the previous digest in OUT. */
static int sha2_rounds(bool is_512, long from, long iterations, atomic_int *cancel,
                       unsigned char *out)
{
    for (long i = from; i < iterations; i++) {
        if (i % HASH_CANCEL_EVERY == 0 && cancel &&
            atomic_load_explicit(cancel, memory_order_relaxed))
            return 1;
        if (is_512) {
            SHA512_CTX c;
            if (!SHA512_Init(&c) || !SHA512_Update(&c, out, SHA512_DIGEST_LENGTH) ||
                !SHA512_Final(out, &c))
                return -1;
        } else {
            SHA256_CTX c;
            if (!SHA256_Init(&c) || !SHA256_Update(&c, out, SHA256_DIGEST_LENGTH) ||
                !SHA256_Final(out, &c))
                return -1;
        }
    }
    return 0;
}

int hash_iterate(const EVP_MD *md, const unsigned char *data, size_t len, long iterations,
                 atomic_int *cancel, unsigned char *out, unsigned int *outlen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = -1;
    if (!ctx)
        return -1;
    if (!EVP_DigestInit_ex2(ctx, md, NULL) || !EVP_DigestUpdate(ctx, data, len) ||
        !EVP_DigestFinal_ex(ctx, out, outlen))
        goto out;
    /* The fetched SHA-2 digests are OpenSSL's default implementation, the
     * same code the low-level calls run: the result is identical. */
    if (md == hash_algorithm("sha256") || md == hash_algorithm("sha512")) {
        rc = sha2_rounds(md == hash_algorithm("sha512"), 1, iterations, cancel, out);
        goto out;
    }
    for (long i = 1; i < iterations; i++) {
        if (i % HASH_CANCEL_EVERY == 0 && cancel && atomic_load_explicit(cancel,
                                                                         memory_order_relaxed)) {
            rc = 1;
            goto out;
        }
        if (!EVP_DigestInit_ex2(ctx, NULL, NULL) || !EVP_DigestUpdate(ctx, out, *outlen) ||
            !EVP_DigestFinal_ex(ctx, out, outlen))
            goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int hash_decode_hex(const char *text, size_t len, unsigned char **out, size_t *outlen)
{
    if (len % 2)
        return -1;
    unsigned char *buf = malloc(len / 2 + 1);
    if (!buf)
        return -1;
    for (size_t i = 0; i < len; i += 2) {
        int hi = hex_value(text[i]), lo = hex_value(text[i + 1]);
        if (hi < 0 || lo < 0) {
            free(buf);
            return -1;
        }
        buf[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    *out = buf;
    *outlen = len / 2;
    return 0;
}

int hash_decode_base64(const char *text, size_t len, unsigned char **out, size_t *outlen)
{
    if (len % 4)
        return -1;
    size_t pad = 0;
    if (len >= 1 && text[len - 1] == '=')
        pad++;
    if (len >= 2 && text[len - 2] == '=')
        pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", text[i]) ||
            text[i] == '\0')
            return -1;
    unsigned char *buf = malloc(len / 4 * 3 + 1);
    if (!buf)
        return -1;
    /* EVP_DecodeBlock ignores padding: it decodes '=' as zero bits. */
    int n = len ? EVP_DecodeBlock(buf, (const unsigned char *)text, (int)len) : 0;
    if (n < 0) {
        free(buf);
        return -1;
    }
    *out = buf;
    *outlen = (size_t)n - pad;
    return 0;
}

/* ---- the executor ---------------------------------------------------------- */

static int hash_parse(struct job *job, const json_t *spec, struct job_error *err)
{
    static const char *const fields[] = {"data", "encoding", "algorithm", "iterations", NULL};
    if (spec_check_fields(spec, "hash", fields, err))
        return -1;
    json_t *data = json_object_get(spec, "data");
    const char *encoding = "utf8", *algorithm = "sha256";
    json_int_t iterations = 1;
    if (!data || !json_is_string(data)) {
        job_error_set(err, ERR_INVALID_JOB, "hash.data: required, a string");
        return -1;
    }
    json_t *v;
    if ((v = json_object_get(spec, "encoding")) && !(encoding = json_string_value(v))) {
        job_error_set(err, ERR_INVALID_JOB, "hash.encoding: must be utf8, hex or base64");
        return -1;
    }
    if ((v = json_object_get(spec, "algorithm")) && !(algorithm = json_string_value(v))) {
        job_error_set(err, ERR_INVALID_JOB,
                      "hash.algorithm: must be sha256, sha512, sha1 or blake2b512");
        return -1;
    }
    if ((v = json_object_get(spec, "iterations"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > MAX_ITERATIONS) {
            job_error_set(err, ERR_INVALID_JOB, "hash.iterations: must be an integer 1..%ld",
                          MAX_ITERATIONS);
            return -1;
        }
        iterations = json_integer_value(v);
    }
    const EVP_MD *md = hash_algorithm(algorithm);
    if (!md) {
        job_error_set(err, ERR_INVALID_JOB,
                      "hash.algorithm: must be sha256, sha512, sha1 or blake2b512, got \"%.32s\"",
                      algorithm);
        return -1;
    }
    struct hash_state *st = calloc(1, sizeof(*st));
    if (!st) {
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return -1;
    }
    const char *text = json_string_value(data);
    size_t len = json_string_length(data);
    int rc = 0;
    if (!strcmp(encoding, "utf8")) {
        /* jansson guarantees valid UTF-8 (and no NUL without JSON_ALLOW_NUL). */
        st->data = malloc(len + 1);
        if (st->data)
            memcpy(st->data, text, len);
        st->len = len;
        rc = st->data ? 0 : -1;
        if (rc)
            job_error_set(err, ERR_INTERNAL, "out of memory");
    } else if (!strcmp(encoding, "hex")) {
        if ((rc = hash_decode_hex(text, len, &st->data, &st->len)))
            job_error_set(err, ERR_INVALID_JOB, "hash.data: not valid hex");
    } else if (!strcmp(encoding, "base64")) {
        if ((rc = hash_decode_base64(text, len, &st->data, &st->len)))
            job_error_set(err, ERR_INVALID_JOB, "hash.data: not valid base64");
    } else {
        job_error_set(err, ERR_INVALID_JOB,
                      "hash.encoding: must be utf8, hex or base64, got \"%.32s\"", encoding);
        rc = -1;
    }
    if (rc) {
        free(st->data);
        free(st);
        return -1;
    }
    st->md = md;
    st->iterations = (long)iterations;
    st->job = job;
    job->exec_state = st;
    return 0;
}

static void hash_work(struct pool_task *task)
{
    struct hash_state *st = (struct hash_state *)task;
    st->outcome = hash_iterate(st->md, st->data, st->len, st->iterations, task->cancel,
                               st->digest, &st->digest_len);
}

static void hash_done(struct pool_task *task)
{
    struct hash_state *st = (struct hash_state *)task;
    struct job *job = st->job;
    if (task->skipped || st->outcome == 1) {
        job_fail(job, ERR_CANCELLED, "hash stopped");
        return;
    }
    if (st->outcome < 0) {
        job_fail(job, ERR_INTERNAL, "OpenSSL digest failed");
        return;
    }
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    hex_encode(st->digest, st->digest_len, hex);
    job_succeed(job, json_pack("{s:s}", "digest", hex));
}

static void hash_start(struct job *job)
{
    struct hash_state *st = job->exec_state;
    st->task.work = hash_work;
    st->task.done = hash_done;
    st->task.cancel = &job->cancel_flag;
    st->task.owner = job_pool_owner(job);
    if (threadpool_submit(job->d->pool, &st->task))
        job_fail(job, ERR_UNAVAILABLE, "thread pool queue is full");
}

/* The runner sets job->cancel_flag before calling this; a worker sees it
 * within HASH_CANCEL_EVERY rounds and done() reports the stop. A task still
 * queued leaves the queue at once: it ended only when a worker reached it,
 * behind every long hash queued first, holding its slot and its record. */
static void hash_cancel(struct job *job)
{
    struct hash_state *st = job->exec_state;
    if (st && st->task.work)
        threadpool_cancel(job->d->pool, &st->task);
}

static void hash_free(struct job *job)
{
    struct hash_state *st = job->exec_state;
    if (!st)
        return;
    free(st->data);
    free(st);
    job->exec_state = NULL;
}

const struct executor hash_executor = {
    .type = "hash",
    .parse = hash_parse,
    .start = hash_start,
    .cancel = hash_cancel,
    .free = hash_free,
};
