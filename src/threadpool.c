/* threadpool.c - worker threads for CPU-heavy and blocking work.
 *
 * memcached's pattern (thread.c): tasks wait in a mutex-protected FIFO;
 * finished tasks go to a second mutex-protected queue, and the worker that
 * makes it non-empty writes an eventfd the loop watches; the loop then drains
 * the whole queue and runs each done() on its own thread. Locking rules are in
 * doc/threads.md.
 */
#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "threadpool.h"

struct task_queue {
    struct pool_task *head, *tail;
    int length;
};

struct threadpool {
    int nthreads;
    pthread_t *threads;
    int max_queue;

    pthread_mutex_t lock;       /* guards todo, busy, stopping */
    pthread_cond_t wake;
    struct task_queue todo;
    int busy;
    bool stopping;

    pthread_mutex_t done_lock;  /* guards done */
    struct task_queue done;
    int efd;
    struct event *done_event;
};

static void queue_push(struct task_queue *q, struct pool_task *t)
{
    t->next = NULL;
    if (q->tail)
        q->tail->next = t;
    else
        q->head = t;
    q->tail = t;
    q->length++;
}

static struct pool_task *queue_pop(struct task_queue *q)
{
    struct pool_task *t = q->head;
    if (t) {
        q->head = t->next;
        if (!q->head)
            q->tail = NULL;
        q->length--;
        t->next = NULL;
    }
    return t;
}

static void hand_back(struct threadpool *pool, struct pool_task *t)
{
    pthread_mutex_lock(&pool->done_lock);
    bool was_empty = pool->done.length == 0;
    queue_push(&pool->done, t);
    pthread_mutex_unlock(&pool->done_lock);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t w = write(pool->efd, &one, sizeof(one));
        (void)w;    /* EAGAIN: the counter is already non-zero, the loop will wake */
    }
}

int threadpool_cancel(struct threadpool *pool, struct pool_task *task)
{
    pthread_mutex_lock(&pool->lock);
    struct task_queue *q = &pool->todo;
    struct pool_task *prev = NULL, *t = q->head;
    while (t && t != task) {
        prev = t;
        t = t->next;
    }
    if (t) {
        if (prev)
            prev->next = t->next;
        else
            q->head = t->next;
        if (q->tail == t)
            q->tail = prev;
        q->length--;
    }
    pthread_mutex_unlock(&pool->lock);
    if (!t)
        return -1;
    t->skipped = true;
    hand_back(pool, t);     /* done() from the loop, as for every task */
    return 0;
}

static void *worker_main(void *arg)
{
    struct threadpool *pool = arg;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (!pool->stopping && pool->todo.length == 0)
            pthread_cond_wait(&pool->wake, &pool->lock);
        if (pool->stopping)
            break;
        struct pool_task *t = queue_pop(&pool->todo);
        pool->busy++;
        pthread_mutex_unlock(&pool->lock);

        t->skipped = t->cancel && atomic_load(t->cancel);
        if (!t->skipped)
            t->work(t);
        hand_back(pool, t);

        pthread_mutex_lock(&pool->lock);
        pool->busy--;
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

static void run_done(struct threadpool *pool)
{
    pthread_mutex_lock(&pool->done_lock);
    struct task_queue q = pool->done;
    memset(&pool->done, 0, sizeof(pool->done));
    pthread_mutex_unlock(&pool->done_lock);
    struct pool_task *t;
    while ((t = queue_pop(&q)))
        t->done(t);
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct threadpool *pool = arg;
    uint64_t count;
    ssize_t r = read(pool->efd, &count, sizeof(count));
    (void)r;
    run_done(pool);
}

struct threadpool *threadpool_create(struct event_base *base, int nthreads, int max_queue)
{
    struct threadpool *pool = calloc(1, sizeof(*pool));
    if (!pool)
        return NULL;
    if (nthreads <= 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = cpus > 0 ? (int)cpus : 1;
    }
    pool->nthreads = nthreads;
    pool->max_queue = max_queue;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_mutex_init(&pool->done_lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pool->threads = calloc((size_t)nthreads, sizeof(*pool->threads));
    if (pool->efd < 0 || !pool->threads)
        goto fail;
    pool->done_event = event_new(base, pool->efd, EV_READ | EV_PERSIST, done_cb, pool);
    if (!pool->done_event || event_add(pool->done_event, NULL))
        goto fail;

    /* Workers start with every signal blocked: signals belong to the loop. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int started = 0, err = 0;
    for (; started < nthreads; started++)
        if ((err = pthread_create(&pool->threads[started], NULL, worker_main, pool)))
            break;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        log_error("thread pool: cannot start thread %d: %s", started + 1, strerror(err));
        pool->nthreads = started;
        threadpool_destroy(pool);
        return NULL;
    }
    return pool;

fail:
    if (pool->done_event)
        event_free(pool->done_event);
    if (pool->efd >= 0)
        close(pool->efd);
    free(pool->threads);
    free(pool);
    return NULL;
}

int threadpool_submit(struct threadpool *pool, struct pool_task *task)
{
    int rc = -1;
    task->skipped = false;
    pthread_mutex_lock(&pool->lock);
    if (!pool->stopping && pool->todo.length < pool->max_queue) {
        queue_push(&pool->todo, task);
        pthread_cond_signal(&pool->wake);
        rc = 0;
    }
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

int threadpool_size(const struct threadpool *pool)
{
    return pool->nthreads;
}

int threadpool_queued(struct threadpool *pool)
{
    pthread_mutex_lock(&pool->lock);
    int n = pool->todo.length;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

int threadpool_busy(struct threadpool *pool)
{
    pthread_mutex_lock(&pool->lock);
    int n = pool->busy;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

int threadpool_unfinished(struct threadpool *pool)
{
    /* In this order: a worker queues its task as done before it stops
     * counting it busy, and only this (loop) thread runs done() or
     * threadpool_cancel(), so a task is never missed between the two. */
    pthread_mutex_lock(&pool->lock);
    int n = pool->todo.length + pool->busy;
    pthread_mutex_unlock(&pool->lock);
    pthread_mutex_lock(&pool->done_lock);
    n += pool->done.length;
    pthread_mutex_unlock(&pool->done_lock);
    return n;
}

static void join_and_free(struct threadpool *pool);

/* Stop the workers and free POOL; with ONLY_IF_IDLE, -1 and nothing done
 * while a task runs. */
static int stop(struct threadpool *pool, bool only_if_idle)
{
    pthread_mutex_lock(&pool->lock);
    if (only_if_idle && pool->busy) {
        pthread_mutex_unlock(&pool->lock);
        return -1;
    }
    pool->stopping = true;      /* under the lock: no worker takes a task after this */
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    join_and_free(pool);
    return 0;
}

void threadpool_destroy(struct threadpool *pool)
{
    if (pool)
        stop(pool, false);
}

int threadpool_destroy_if_idle(struct threadpool *pool)
{
    return pool ? stop(pool, true) : 0;
}

static void join_and_free(struct threadpool *pool)
{
    for (int i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);

    /* Finished tasks first, then the ones no worker reached. */
    run_done(pool);
    struct pool_task *t;
    while ((t = queue_pop(&pool->todo))) {
        t->skipped = true;
        t->done(t);
    }
    event_free(pool->done_event);
    close(pool->efd);
    pthread_mutex_destroy(&pool->lock);
    pthread_mutex_destroy(&pool->done_lock);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}
