/* test_threadpool.c - tasks run on workers, come back on the loop thread. */
#include <event2/event.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "threadpool.h"

struct counted {
    struct pool_task task;
    pthread_t worker;
    pthread_t finisher;
    bool worked;
    int *done_count;
    struct event_base *base;
    int stop_after;
};

static pthread_t loop_thread;

static void work(struct pool_task *t)
{
    struct counted *c = (struct counted *)t;
    c->worker = pthread_self();
    c->worked = true;
}

static void done(struct pool_task *t)
{
    struct counted *c = (struct counted *)t;
    c->finisher = pthread_self();
    if (++*c->done_count == c->stop_after && c->base)
        event_base_loopbreak(c->base);
}

static void test_tasks_run_on_workers_and_finish_on_loop(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 4, 2000);
    assert_non_null(pool);
    assert_int_equal(threadpool_size(pool), 4);
    loop_thread = pthread_self();
    enum { N = 1000 };
    struct counted *tasks = calloc(N, sizeof(*tasks));
    int done_count = 0;
    for (int i = 0; i < N; i++) {
        tasks[i].task.work = work;
        tasks[i].task.done = done;
        tasks[i].done_count = &done_count;
        tasks[i].base = base;
        tasks[i].stop_after = N;
        assert_int_equal(threadpool_submit(pool, &tasks[i].task), 0);
    }
    event_base_dispatch(base);
    assert_int_equal(done_count, N);
    for (int i = 0; i < N; i++) {
        assert_true(tasks[i].worked);
        assert_false(tasks[i].task.skipped);
        assert_false(pthread_equal(tasks[i].worker, loop_thread));
        assert_true(pthread_equal(tasks[i].finisher, loop_thread));
    }
    threadpool_destroy(pool);
    event_base_free(base);
    free(tasks);
}

static void test_cancelled_before_start_is_skipped(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 1, 10);
    atomic_int cancel = 1;
    int done_count = 0;
    struct counted c = {.task = {.work = work, .done = done, .cancel = &cancel},
                        .done_count = &done_count, .base = base, .stop_after = 1};
    assert_int_equal(threadpool_submit(pool, &c.task), 0);
    event_base_dispatch(base);
    assert_int_equal(done_count, 1);
    assert_true(c.task.skipped);
    assert_false(c.worked);
    threadpool_destroy(pool);
    event_base_free(base);
}

static void slow_work(struct pool_task *t)
{
    usleep(50000);
    work(t);
}

static void test_bounded_queue_and_destroy_runs_every_done(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 1, 2);
    int done_count = 0;
    struct counted c[4];
    memset(c, 0, sizeof(c));
    int accepted = 0;
    for (int i = 0; i < 4; i++) {
        c[i].task.work = slow_work;
        c[i].task.done = done;
        c[i].done_count = &done_count;
        if (threadpool_submit(pool, &c[i].task) == 0)
            accepted++;
    }
    /* One may already be running, two wait: the fourth (at least) is refused. */
    assert_true(accepted >= 2 && accepted <= 3);
    threadpool_destroy(pool);
    assert_int_equal(done_count, accepted);
    event_base_free(base);
}

/* Blocks its worker until *gate opens: the tasks behind it stay queued. */
static atomic_int gate;

static void gated_work(struct pool_task *t)
{
    while (!atomic_load(&gate))
        usleep(1000);
    work(t);
}

static void test_a_queued_task_cancelled_ends_without_waiting_its_turn(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 1, 10);
    int done_count = 0;
    atomic_store(&gate, 0);
    struct counted first = {.task = {.work = gated_work, .done = done},
                            .done_count = &done_count, .base = base, .stop_after = 1};
    struct counted queued[3];
    memset(queued, 0, sizeof(queued));
    assert_int_equal(threadpool_submit(pool, &first.task), 0);
    for (int i = 0; i < 3; i++) {
        queued[i] = (struct counted){.task = {.work = work, .done = done},
                                     .done_count = &done_count, .base = base, .stop_after = 1};
        assert_int_equal(threadpool_submit(pool, &queued[i].task), 0);
    }
    while (threadpool_busy(pool) == 0)   /* the first is on the worker */
        usleep(1000);
    /* The middle one leaves the queue: its done() comes from the loop while
     * the worker is still held by the first; cancelling it again, or the
     * running one, finds nothing to take out. */
    assert_int_equal(threadpool_cancel(pool, &queued[1].task), 0);
    assert_int_equal(done_count, 0);    /* never inside the call */
    assert_int_equal(threadpool_cancel(pool, &queued[1].task), -1);
    assert_int_equal(threadpool_cancel(pool, &first.task), -1);
    event_base_dispatch(base);
    assert_int_equal(done_count, 1);
    assert_true(queued[1].task.skipped);
    assert_false(queued[1].worked);
    assert_false(first.worked);
    assert_int_equal(threadpool_queued(pool), 2);   /* the others keep their places */
    first.stop_after = queued[0].stop_after = queued[2].stop_after = 4;
    atomic_store(&gate, 1);
    event_base_dispatch(base);
    assert_int_equal(done_count, 4);
    assert_true(first.worked && queued[0].worked && queued[2].worked);
    threadpool_destroy(pool);
    event_base_free(base);
}

/* A task counts as unfinished until its done() ran on the loop, not only
 * while a worker has it: the drain's give-up waits on that (daemon.c). */
static void test_unfinished_lasts_until_done_ran(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 1, 10);
    int done_count = 0;
    atomic_store(&gate, 0);
    struct counted c[2];
    memset(c, 0, sizeof(c));
    for (int i = 0; i < 2; i++) {
        c[i] = (struct counted){.task = {.work = gated_work, .done = done},
                                .done_count = &done_count, .base = base, .stop_after = 2};
        assert_int_equal(threadpool_submit(pool, &c[i].task), 0);
    }
    assert_int_equal(threadpool_unfinished(pool), 2);   /* running or waiting */
    atomic_store(&gate, 1);
    while (threadpool_busy(pool) || threadpool_queued(pool))
        usleep(1000);
    assert_int_equal(threadpool_unfinished(pool), 2);   /* worked, done() not run */
    event_base_dispatch(base);
    assert_int_equal(done_count, 2);
    assert_int_equal(threadpool_unfinished(pool), 0);
    threadpool_destroy(pool);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tasks_run_on_workers_and_finish_on_loop),
        cmocka_unit_test(test_cancelled_before_start_is_skipped),
        cmocka_unit_test(test_bounded_queue_and_destroy_runs_every_done),
        cmocka_unit_test(test_a_queued_task_cancelled_ends_without_waiting_its_turn),
        cmocka_unit_test(test_unfinished_lasts_until_done_ran),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
