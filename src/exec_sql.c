/* exec_sql.c - the "sql" type (PROTOCOL §3): a named query from the config
 * (or raw SQL when postgres.allow_raw_sql), parameters always sent as
 * parameters, run on the connection pool in pgpool.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "executor.h"
#include "pgpool.h"
#include "sql_session.h"

#define MAX_PARAMS 100

struct sql_state {
    struct sql_query q;         /* handed to the pool */
    struct job *job;
    char *name, *sql;           /* copies: the config may be reloaded */
    char **params;
    int nparams;
    unsigned session;           /* SQL_SESSION_*: what it may leave on its session */
};

static void sql_free(struct job *job)
{
    struct sql_state *st = job->exec_state;
    if (!st)
        return;
    for (int i = 0; i < st->nparams; i++)
        free(st->params[i]);
    free(st->params);
    free(st->name);
    free(st->sql);
    json_decref(st->q.rows);
    free(st);
    job->exec_state = NULL;
}

/* JSON scalars become their text form; arrays and objects their JSON text
 * (for json/jsonb and array parameters); null is SQL NULL. */
static char *param_text(const json_t *v)
{
    char buf[64];
    switch (json_typeof(v)) {
    case JSON_STRING: return strndup(json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return strdup(buf);
    case JSON_REAL:
        snprintf(buf, sizeof(buf), "%.17g", json_real_value(v));
        return strdup(buf);
    case JSON_TRUE: return strdup("true");
    case JSON_FALSE: return strdup("false");
    case JSON_NULL: return NULL;
    default: return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    }
}

static int sql_parse(struct job *job, const json_t *spec, struct job_error *err)
{
    static const char *const fields[] = {"query", "sql", "params", NULL};
    const struct config *cfg = &job->d->cfg;
    if (spec_check_fields(spec, "sql", fields, err))
        return -1;
    if (!cfg->pg_conninfo || !*cfg->pg_conninfo) {
        job_error_set(err, ERR_UNAVAILABLE, "sql jobs are off: postgres.conninfo is empty");
        return -1;
    }
    json_t *query = json_object_get(spec, "query");
    json_t *raw = json_object_get(spec, "sql");
    json_t *params = json_object_get(spec, "params");
    if (!!query == !!raw) {
        job_error_set(err, ERR_INVALID_JOB, "sql: give exactly one of query or sql");
        return -1;
    }
    const char *text = NULL;
    /* Raw SQL may call code that does anything: always checked after. */
    unsigned session = SQL_SESSION_ANY;
    if (query) {
        const struct named_query *nq = NULL;
        if (!json_is_string(query) || !(nq = config_query(cfg, json_string_value(query)))) {
            job_error_set(err, ERR_INVALID_JOB, "sql.query: no query named \"%.64s\" in "
                          "postgres.queries", json_is_string(query) ? json_string_value(query) : "");
            return -1;
        }
        text = nq->sql;
        session = nq->session;
    } else {
        if (!json_is_string(raw) || !json_string_length(raw) ||
            strlen(json_string_value(raw)) != json_string_length(raw)) {
            job_error_set(err, ERR_INVALID_JOB, "sql.sql: must be a non-empty string");
            return -1;
        }
        if (!cfg->pg_allow_raw_sql) {
            job_error_set(err, ERR_FORBIDDEN,
                          "sql.sql: raw SQL is refused (postgres.allow_raw_sql is false); "
                          "use a named query");
            return -1;
        }
        text = json_string_value(raw);
    }
    if (params && (!json_is_array(params) || json_array_size(params) > MAX_PARAMS)) {
        job_error_set(err, ERR_INVALID_JOB, "sql.params: must be a list of at most %d values",
                      MAX_PARAMS);
        return -1;
    }
    struct sql_state *st = calloc(1, sizeof(*st));
    if (!st) {
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return -1;
    }
    job->exec_state = st;
    st->job = job;
    st->sql = strdup(text);
    st->name = query ? strdup(json_string_value(query)) : NULL;
    st->session = session;
    st->nparams = params ? (int)json_array_size(params) : 0;
    st->params = calloc((size_t)st->nparams + 1, sizeof(char *));
    for (int i = 0; i < st->nparams; i++) {
        const json_t *v = json_array_get(params, (size_t)i);
        st->params[i] = param_text(v);
        if (!st->params[i] && !json_is_null(v)) {
            job_error_set(err, ERR_INTERNAL, "out of memory");
            return -1;
        }
        if (json_is_string(v) && strlen(json_string_value(v)) != json_string_length(v)) {
            job_error_set(err, ERR_INVALID_JOB, "sql.params[%d]: NUL bytes are not allowed", i);
            return -1;
        }
    }
    return 0;
}

static void query_done(struct sql_query *q)
{
    struct sql_state *st = q->arg;
    struct job *job = st->job;
    if (q->err.code) {
        job_fail_with(job, &q->err);
        return;
    }
    json_t *rows = q->rows;
    q->rows = NULL;
    job_succeed(job, json_pack("{s:o, s:I, s:s}", "rows", rows, "row_count",
                               (json_int_t)q->row_count, "command", q->command));
}

static void sql_start(struct job *job)
{
    struct sql_state *st = job->exec_state;
    if (!job->d->pgpool) {
        job_fail(job, ERR_UNAVAILABLE, "sql jobs are off: postgres.conninfo is empty");
        return;
    }
    json_decref(st->q.rows);
    memset(&st->q, 0, sizeof(st->q));
    st->q.name = st->name;
    st->q.sql = st->sql;
    st->q.nparams = st->nparams;
    st->q.session = st->session;
    st->q.params = (const char *const *)st->params;
    /* statement_timeout a little past the job's: the runner's cancel comes
     * first, the server's limit catches what it misses. */
    st->q.timeout_ms = job->timeout_ms + 500;
    st->q.done = query_done;
    st->q.arg = st;
    st->q.job_id = job->id;
    pgpool_submit(job->d->pgpool, &st->q);
}

static void sql_cancel(struct job *job)
{
    struct sql_state *st = job->exec_state;
    /* A timeout with attempts left is retried (a timeout is transient). */
    bool again = job->stop == STOP_TIMEOUT && job->attempts < job->retry.attempts;
    pgpool_cancel(job->d->pgpool, &st->q, again);
}

const struct executor sql_executor = {
    .type = "sql",
    .parse = sql_parse,
    .start = sql_start,
    .cancel = sql_cancel,
    .free = sql_free,
};
