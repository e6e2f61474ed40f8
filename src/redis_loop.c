/* redis_loop.c - hiredis async contexts on the libevent loop (see redis_loop.h).
 *
 * No flags of our own for what is armed: event_add() of a pending event,
 * event_del() of one that is not, and event_active() of an active one change
 * nothing and make no system call. */
#include <stdbool.h>
#include <stdlib.h>

#include "redis_loop.h"

struct loop_events {
    redisAsyncContext *ac;
    struct event *rev;          /* persistent while hiredis wants reads */
    struct event *wev;          /* only while a write is waiting for room */
    struct event *flush;        /* activated: write when this loop pass ends */
    bool in_flush;              /* inside on_flush's redisAsyncHandleWrite */
    bool released;              /* cleanup ran inside it: on_flush frees */
};

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    struct loop_events *e = arg;
    redisAsyncHandleRead(e->ac);     /* may free the context, and E with it */
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    struct loop_events *e = arg;
    redisAsyncHandleWrite(e->ac);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct loop_events *e = arg;
    e->in_flush = true;
    redisAsyncHandleWrite(e->ac);
    if (e->released) {          /* the write failed and hiredis let go of E */
        free(e);
        return;
    }
    e->in_flush = false;
}

static void add_read(void *priv)
{
    event_add(((struct loop_events *)priv)->rev, NULL);
}

static void del_read(void *priv)
{
    event_del(((struct loop_events *)priv)->rev);
}

static void add_write(void *priv)
{
    struct loop_events *e = priv;
    /* Until connected, writability is how hiredis learns the connect ended;
     * and a write that left bytes behind must wait for room. */
    if ((e->ac->c.flags & REDIS_CONNECTED) && !e->in_flush &&
        !event_pending(e->wev, EV_WRITE, NULL))
        event_active(e->flush, EV_WRITE, 0);
    else
        event_add(e->wev, NULL);
}

static void del_write(void *priv)
{
    event_del(((struct loop_events *)priv)->wev);
}

static void free_events(struct loop_events *e)
{
    if (e->rev)
        event_free(e->rev);
    if (e->wev)
        event_free(e->wev);
    if (e->flush)
        event_free(e->flush);
}

static void cleanup(void *priv)
{
    struct loop_events *e = priv;
    free_events(e);
    if (e->in_flush)
        e->released = true;
    else
        free(e);
}

int redis_loop_attach(redisAsyncContext *ac, struct event_base *base)
{
    if (ac->ev.data)
        return -1;
    struct loop_events *e = calloc(1, sizeof(*e));
    if (!e)
        return -1;
    e->ac = ac;
    int fd = ac->c.fd;
    e->rev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, e);
    e->wev = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, e);
    e->flush = event_new(base, -1, 0, on_flush, e);
    if (!e->rev || !e->wev || !e->flush) {
        free_events(e);
        free(e);
        return -1;
    }
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = e;
    /* As hiredis's own adapter: reading from the start, and writable is
     * how the non-blocking connect reports its end. */
    add_read(e);
    add_write(e);
    return 0;
}
