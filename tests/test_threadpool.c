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

/* A done() that cancels a sibling still queued, as a group's failing child
 * in "all" mode stops the others. */
static struct threadpool *sibling_pool;
static struct counted *sibling;

static void cancel_sibling_done(struct pool_task *t)
{
    if (sibling_pool && sibling)
        threadpool_cancel(sibling_pool, &sibling->task);
    done(t);
}

static void test_destroy_runs_the_done_of_a_task_cancelled_by_another_done(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 1, 10);
    int done_count = 0;
    struct counted first = {.task = {.work = slow_work, .done = done}, .done_count = &done_count};
    struct counted canceller = {.task = {.work = work, .done = cancel_sibling_done},
                                .done_count = &done_count};
    struct counted victim = {.task = {.work = work, .done = done}, .done_count = &done_count};
    assert_int_equal(threadpool_submit(pool, &first.task), 0);
    while (threadpool_busy(pool) == 0)   /* the first is on the worker */
        usleep(1000);
    assert_int_equal(threadpool_submit(pool, &canceller.task), 0);
    assert_int_equal(threadpool_submit(pool, &victim.task), 0);
    sibling_pool = pool;
    sibling = &victim;
    /* The canceller's done() runs inside the destroy (no worker reached it)
     * and hands the victim back as cancelled: its done() must still run. */
    threadpool_destroy(pool);
    sibling_pool = NULL;
    sibling = NULL;
    assert_int_equal(done_count, 3);
    assert_true(canceller.task.skipped && victim.task.skipped);
    assert_false(victim.worked);
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

/* Tasks of several owners, run one at a time by a single worker: each
 * records its label in the order work() ran. */
struct labelled {
    struct counted c;
    char label;
};

static char ran[64];
static atomic_int ran_count;

static void labelled_work(struct pool_task *t)
{
    struct labelled *l = (struct labelled *)t;
    ran[atomic_fetch_add(&ran_count, 1)] = l->label;
    work(t);
}

static void label(struct labelled *tasks, const char *labels, struct pool_owner **owners, int n)
{
    memset(tasks, 0, (size_t)n * sizeof(*tasks));
    for (int i = 0; i < n; i++) {
        tasks[i].label = labels[i];
        tasks[i].c.task.owner = owners[i];
    }
}

/* Blocks the only worker on a gated task, then queues TASKS (labels and
 * owners set by the caller) behind it. */
static void queue_behind_gate(struct threadpool *pool, struct counted *first, struct labelled *tasks,
                              int n, int *done_count, struct event_base *base)
{
    atomic_store(&gate, 0);
    atomic_store(&ran_count, 0);
    memset(ran, 0, sizeof(ran));
    *first = (struct counted){.task = {.work = gated_work, .done = done},
                              .done_count = done_count, .base = base};
    assert_int_equal(threadpool_submit(pool, &first->task), 0);
    while (threadpool_busy(pool) == 0)
        usleep(1000);
    for (int i = 0; i < n; i++) {
        tasks[i].c.task.work = labelled_work;
        tasks[i].c.task.done = done;
        tasks[i].c.done_count = done_count;
        tasks[i].c.base = base;
        assert_int_equal(threadpool_submit(pool, &tasks[i].c.task), 0);
    }
}

static void run_all(struct event_base *base, struct counted *first,
                    struct labelled *tasks, int n, int expected_done)
{
    first->stop_after = expected_done;
    for (int i = 0; i < n; i++)
        tasks[i].c.stop_after = expected_done;
    atomic_store(&gate, 1);
    event_base_dispatch(base);
}

/* One owner's big batch queued first (a group's children) does not hold back
 * an owner with one task, nor a second big batch: owners with tasks waiting
 * take turns, one task each, each owner's tasks in their order, and tasks
 * without an owner share one turn. */
static void test_owners_take_turns(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 1, 100);
    struct pool_owner a = {0}, b = {0}, c = {0};
    struct pool_owner *owners[] = {&a, &a, &a, &a, &b, &c, &c, &c, NULL};
    enum { N = 9 };
    struct labelled tasks[N];
    label(tasks, "aaaabcccS", owners, N);
    struct counted first;
    int done_count = 0;
    queue_behind_gate(pool, &first, tasks, N, &done_count, base);
    assert_int_equal(threadpool_queued(pool), N);
    run_all(base, &first, tasks, N, N + 1);
    assert_int_equal(done_count, N + 1);
    assert_string_equal(ran, "abcSacaca");
    assert_int_equal(threadpool_queued(pool), 0);
    threadpool_destroy(pool);
    event_base_free(base);
}

/* A waiting task cancelled leaves its owner's queue, and an owner whose last
 * waiting task is cancelled leaves the turns; max_queue counts every owner's
 * tasks together. */
static void test_cancel_and_bound_across_owners(void **state)
{
    struct event_base *base = event_base_new();
    struct threadpool *pool = threadpool_create(base, 1, 5);
    struct pool_owner a = {0}, b = {0}, c = {0};
    struct pool_owner *owners[] = {&a, &a, &b, &c, &c};
    enum { N = 5 };
    struct labelled tasks[N];
    label(tasks, "aabcc", owners, N);
    struct counted first;
    int done_count = 0;
    queue_behind_gate(pool, &first, tasks, N, &done_count, base);
    struct labelled extra = {.c = {.task = {.work = labelled_work, .done = done, .owner = &b},
                                   .done_count = &done_count, .base = base},
                             .label = 'x'};
    assert_int_equal(threadpool_submit(pool, &extra.c.task), -1);   /* 5 wait: full */
    assert_int_equal(threadpool_queued(pool), 5);
    assert_int_equal(threadpool_cancel(pool, &tasks[2].c.task), 0);    /* b's only one */
    assert_int_equal(threadpool_cancel(pool, &tasks[3].c.task), 0);    /* c's first */
    assert_int_equal(threadpool_cancel(pool, &tasks[3].c.task), -1);
    assert_int_equal(threadpool_queued(pool), 3);
    assert_int_equal(threadpool_unfinished(pool), 6);  /* 3 waiting, 1 running, 2 done */
    run_all(base, &first, tasks, N, N + 1);
    assert_int_equal(done_count, N + 1);
    assert_true(tasks[2].c.task.skipped && tasks[3].c.task.skipped);
    assert_string_equal(ran, "aca");
    threadpool_destroy(pool);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tasks_run_on_workers_and_finish_on_loop),
        cmocka_unit_test(test_cancelled_before_start_is_skipped),
        cmocka_unit_test(test_bounded_queue_and_destroy_runs_every_done),
        cmocka_unit_test(test_destroy_runs_the_done_of_a_task_cancelled_by_another_done),
        cmocka_unit_test(test_a_queued_task_cancelled_ends_without_waiting_its_turn),
        cmocka_unit_test(test_unfinished_lasts_until_done_ran),
        cmocka_unit_test(test_owners_take_turns),
        cmocka_unit_test(test_cancel_and_bound_across_owners),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
