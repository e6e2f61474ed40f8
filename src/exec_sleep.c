/* exec_sleep.c - the "sleep" type: waits on a loop timer, no thread. */
#include <event2/event.h>
#include <stdlib.h>

#include "daemon.h"
#include "executor.h"
#include "timer.h"

#define SLEEP_MAX_MS (7LL * 24 * 3600 * 1000)

struct sleep_state {
    int64_t ms;
    int64_t deadline;           /* timer_deadline() */
    struct event *timer;
};

static int sleep_parse(struct job *job, const json_t *spec, struct job_error *err)
{
    static const char *const fields[] = {"ms", NULL};
    if (spec_check_fields(spec, "sleep", fields, err))
        return -1;
    json_t *ms = json_object_get(spec, "ms");
    if (!ms) {
        job_error_set(err, ERR_INVALID_JOB, "sleep.ms: required");
        return -1;
    }
    if (!json_is_integer(ms) || json_integer_value(ms) < 0 ||
        json_integer_value(ms) > SLEEP_MAX_MS) {
        job_error_set(err, ERR_INVALID_JOB, "sleep.ms: must be an integer 0..%lld",
                      (long long)SLEEP_MAX_MS);
        return -1;
    }
    struct sleep_state *st = calloc(1, sizeof(*st));
    if (!st) {
        job_error_set(err, ERR_INTERNAL, "out of memory");
        return -1;
    }
    st->ms = json_integer_value(ms);
    job->exec_state = st;
    return 0;
}

static void sleep_fired(evutil_socket_t fd, short what, void *arg)
{
    struct job *job = arg;
    struct sleep_state *st = job->exec_state;
    if (timer_early(st->timer, st->deadline))
        return;
    json_t *result = json_pack("{s:I}", "slept_ms", (json_int_t)st->ms);
    job_succeed(job, result);
}

static void sleep_start(struct job *job)
{
    struct sleep_state *st = job->exec_state;
    if (!st->timer)
        st->timer = evtimer_new(job->d->base, sleep_fired, job);
    st->deadline = timer_deadline(st->ms);
    if (!st->timer || timer_add_until(st->timer, st->deadline)) {
        job_fail(job, ERR_INTERNAL, "cannot arm timer");
        return;
    }
}

static void sleep_cancel(struct job *job)
{
    struct sleep_state *st = job->exec_state;
    if (st->timer && evtimer_pending(st->timer, NULL)) {
        evtimer_del(st->timer);
        job_fail(job, ERR_CANCELLED, "sleep stopped");
    }
}

static void sleep_free(struct job *job)
{
    struct sleep_state *st = job->exec_state;
    if (!st)
        return;
    if (st->timer)
        event_free(st->timer);
    free(st);
    job->exec_state = NULL;
}

const struct executor sleep_executor = {
    .type = "sleep",
    .parse = sleep_parse,
    .start = sleep_start,
    .cancel = sleep_cancel,
    .free = sleep_free,
};
