/* support.h - what the libFuzzer targets share: a daemon struct good enough
 * for parsing (configuration, event base, libcurl's multi handle), and one
 * envelope taken through envelope_parse() the way the runner takes it. */
#ifndef JOBD_FUZZ_SUPPORT_H
#define JOBD_FUZZ_SUPPORT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon.h"
#include "job.h"

/* Stop with a message: libFuzzer reports the abort as a crash and saves the
 * input. For properties the code must keep, beyond what the sanitizers see. */
#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond))                                                                      \
            fuzz_fail(__FILE__, __LINE__, #cond);                                         \
    } while (0)
void fuzz_fail(const char *file, int line, const char *what) __attribute__((noreturn));

/* Two daemons, built once: ALL_ON has every job type enabled (files.root,
 * postgres.conninfo and a named query, raw SQL allowed), DEFAULTS is the
 * built-in configuration (file and sql jobs refused). No connection is made. */
struct daemon *fuzz_daemon(int all_on);

/* REC, JOB's result record as result_record() rebuilt it, keeps PROTOCOL
 * §4: id, type, status and attempts; a "result" object when JOB succeeded,
 * else an "error" with "code" and "message"; JSON that reads back the same. */
void fuzz_check_record(const struct job *job, json_t *rec);

/* Take RAW (LEN bytes, not NUL-terminated) as the runner does: copy it,
 * envelope_parse() it, build the result record it would store (succeeded
 * with an empty result, or rejected/failed with the error), check the
 * record keeps PROTOCOL §4, and free everything. */
void fuzz_envelope(struct daemon *d, const char *raw, size_t len, int64_t queued_at,
                   int attempts);

#endif
