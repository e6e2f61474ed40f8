/* support.c - shared set-up of the fuzz targets (see support.h). */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"
#include "exec_http.h"
#include "executor.h"
#include "jsonw.h"
#include "log.h"
#include "result.h"
#include "support.h"

void fuzz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: property does not hold: %s\n", file, line, what);
    abort();
}

static struct daemon daemons[2];
static int made[2];

static char *dup_or_die(const char *s)
{
    char *copy = strdup(s);
    FUZZ_CHECK(copy);
    return copy;
}

struct daemon *fuzz_daemon(int all_on)
{
    struct daemon *d = &daemons[all_on ? 1 : 0];
    if (made[all_on ? 1 : 0])
        return d;
    made[all_on ? 1 : 0] = 1;
    log_set_level(LOG_ERROR);
    FUZZ_CHECK(config_defaults(&d->cfg) == 0);
    snprintf(d->worker_id, sizeof(d->worker_id), "fuzz:%d", all_on);
    d->base = event_base_new();
    FUZZ_CHECK(d->base);
    if (all_on) {
        free(d->cfg.files_root);
        d->cfg.files_root = dup_or_die("/nonexistent/jobd-fuzz-root");
        free(d->cfg.pg_conninfo);
        d->cfg.pg_conninfo = dup_or_die("host=127.0.0.1 port=1 dbname=fuzz");
        d->cfg.pg_allow_raw_sql = true;
        d->cfg.pg_queries = calloc(2, sizeof(*d->cfg.pg_queries));
        FUZZ_CHECK(d->cfg.pg_queries);
        d->cfg.pg_queries[0].name = dup_or_die("account_balance");
        d->cfg.pg_queries[0].sql =
            dup_or_die("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
        d->cfg.pg_nqueries = 1;
        /* The http parser needs the multi handle; one per process, so only
         * this daemon has it (the other one's http jobs are "unavailable"
         * exactly as when libcurl failed). Nothing is ever transferred. */
        FUZZ_CHECK(http_executor_init(d) == 0);
    }
    return d;
}

/* What job_free() in runner.c releases. */
static void release(struct job *job)
{
    if (job->exec && job->exec->free)
        job->exec->free(job);
    json_decref(job->envelope);
    json_decref(job->spec);
    json_decref(job->result);
    free(job->raw);
    free(job->reply_to);
}

void fuzz_check_record(const struct job *job, json_t *rec)
{
    FUZZ_CHECK(json_is_object(rec));
    json_t *id = json_object_get(rec, "id");
    FUZZ_CHECK(json_is_null(id) || json_is_string(id));
    if (json_is_string(id))
        FUZZ_CHECK(envelope_valid_id(json_string_value(id), json_string_length(id)));
    FUZZ_CHECK(json_is_string(json_object_get(rec, "type")));
    FUZZ_CHECK(json_is_string(json_object_get(rec, "status")));
    FUZZ_CHECK(json_is_integer(json_object_get(rec, "attempts")));
    if (job->status == JOB_SUCCEEDED) {
        FUZZ_CHECK(json_is_object(json_object_get(rec, "result")));
    } else {
        /* PROTOCOL §4: every status but succeeded carries error.code and
         * error.message. */
        json_t *e = json_object_get(rec, "error");
        FUZZ_CHECK(json_is_object(e));
        FUZZ_CHECK(json_is_string(json_object_get(e, "code")));
        FUZZ_CHECK(json_is_string(json_object_get(e, "message")));
    }
    /* What is SET and PUBLISHed must be JSON that reads back the same.
     * JSON_ALLOW_NUL as result_record() and jobctl: an http job's "json"
     * may hold "\u0000", which is valid JSON. */
    char *text = json_dumps(rec, JSON_COMPACT);
    FUZZ_CHECK(text);
    json_t *back = json_loads(text, JSON_ALLOW_NUL, NULL);
    FUZZ_CHECK(back && json_equal(back, rec));
    json_decref(back);
    free(text);
}

void fuzz_envelope(struct daemon *d, const char *raw, size_t len, int64_t queued_at,
                   int attempts)
{
    struct job job;
    memset(&job, 0, sizeof(job));
    /* As runner_accept(): a NUL-terminated copy, the config's defaults. */
    job.raw = malloc(len + 1);
    FUZZ_CHECK(job.raw);
    memcpy(job.raw, raw, len);
    job.raw[len] = '\0';
    job.raw_len = len;
    job.d = d;
    job.source = SOURCE_STREAM;
    job.type = "";
    job.attempts = attempts;
    job.queued_at = queued_at;
    job.timeout_ms = d->cfg.timeout_ms;
    job.retry = d->cfg.retry;
    job.result_ttl = d->cfg.result_ttl;

    struct job_error err;
    memset(&err, 0, sizeof(err));
    int rc = envelope_parse(&job, &d->cfg, &err);
    if (rc == 0) {
        FUZZ_CHECK(job.exec && job.spec && json_is_object(job.envelope));
        FUZZ_CHECK(job.timeout_ms >= 1 && job.result_ttl >= 1);
        FUZZ_CHECK(job.retry.attempts >= 1 && job.retry.attempts <= 100);
        FUZZ_CHECK(job.retry.backoff >= 1.0);
        /* A successful attempt whose executor gave no result object. */
        job.status = JOB_SUCCEEDED;
    } else {
        FUZZ_CHECK(err.code != NULL);
        bool refused = !strcmp(err.code, ERR_FORBIDDEN) || !strcmp(err.code, ERR_UNAVAILABLE);
        job.status = refused ? JOB_FAILED : JOB_REJECTED;
        job.error = err;
    }
    if (job.id[0])
        FUZZ_CHECK(envelope_valid_id(job.id, strlen(job.id)));
    /* Records are written by jsonw.c: on any document jansson parsed, it
     * must give jansson's own text. */
    if (job.envelope) {
        char *want = json_dumps(job.envelope, JSON_COMPACT | JSON_ENCODE_ANY);
        char *got = jsonw_dumps(job.envelope, NULL);
        FUZZ_CHECK(want && got && !strcmp(want, got));
        free(want);
        free(got);
    }
    json_t *rec = result_record(d, &job);
    fuzz_check_record(&job, rec);
    json_decref(rec);
    release(&job);
}
