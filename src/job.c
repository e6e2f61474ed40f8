/* job.c - the small pieces of a job every module shares: error filling, the
 * transient-error rule and the backoff formula of PROTOCOL §2, and clocks. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "job.h"
#include "runner.h"

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void job_error_vset(struct job_error *err, const char *code, const char *fmt, va_list ap)
{
    memset(err, 0, sizeof(*err));
    err->code = code;
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
}

void job_error_set(struct job_error *err, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    job_error_vset(err, code, fmt, ap);
    va_end(ap);
}

void job_succeed(struct job *job, json_t *result)
{
    json_decref(job->result);
    job->result = result;
    memset(&job->error, 0, sizeof(job->error));
    json_decref(job->error_results);
    job->error_results = NULL;
    job->status = JOB_SUCCEEDED;
    runner_attempt_done(job);
}

void job_fail(struct job *job, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    job_error_vset(&job->error, code, fmt, ap);
    va_end(ap);
    json_decref(job->result);
    job->result = NULL;
    job->status = JOB_FAILED;
    runner_attempt_done(job);
}

void job_fail_with(struct job *job, const struct job_error *err)
{
    job->error = *err;
    json_decref(job->result);
    job->result = NULL;
    job->status = JOB_FAILED;
    runner_attempt_done(job);
}

struct job *job_root(struct job *job)
{
    while (job->parent)
        job = job->parent;
    return job;
}

struct pool_owner *job_pool_owner(struct job *job)
{
    return &job_root(job)->pool_owner;
}

const char *job_status_name(enum job_status status)
{
    switch (status) {
    case JOB_SUCCEEDED: return "succeeded";
    case JOB_FAILED: return "failed";
    case JOB_TIMED_OUT: return "timed_out";
    case JOB_CANCELLED: return "cancelled";
    case JOB_REJECTED: return "rejected";
    }
    return "failed";
}

/* SQLSTATEs worth retrying: connection exceptions (class 08), serialization
 * failure, deadlock, admin shutdown. */
static bool sqlstate_is_transient(const char *s)
{
    return strncmp(s, "08", 2) == 0 || strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0 ||
           strcmp(s, "57P01") == 0;
}

bool job_error_is_transient(const struct job_error *err)
{
    if (!err->code)
        return false;
    if (!strcmp(err->code, ERR_TIMEOUT) || !strcmp(err->code, ERR_HTTP_ERROR) ||
        !strcmp(err->code, ERR_UNAVAILABLE))
        return true;
    if (!strcmp(err->code, ERR_HTTP_STATUS))
        return err->http_status == 429 || (err->http_status >= 500 && err->http_status <= 599);
    if (!strcmp(err->code, ERR_SQL_ERROR))
        return sqlstate_is_transient(err->sqlstate);
    return false;
}

int64_t retry_delay_ms(const struct retry_policy *p, int attempt, double rnd01)
{
    if (attempt < 1)
        attempt = 1;
    /* pow() of a large exponent is inf; min() with the cap keeps it finite. */
    double delay = (double)p->delay_ms * pow(p->backoff, attempt - 1);
    if (!(delay <= (double)p->max_delay_ms))
        delay = (double)p->max_delay_ms;
    if (p->jitter)
        delay *= 0.5 + 0.5 * rnd01;
    return (int64_t)delay;
}
