/* redis_loop.h - hiredis async contexts on the libevent loop.
 *
 * Replaces hiredis 0.14.1's adapters/libevent.h, which re-adds a one-shot
 * read event after every read and adds a write event for every command: four
 * epoll_ctl calls and an extra loop pass per round trip. Here the read event
 * is persistent, and what a connected context has to send is written when
 * the current loop pass ends (an active event: no system call to arrange);
 * only a write the socket could not take whole waits for EV_WRITE.
 */
#ifndef JOBD_REDIS_LOOP_H
#define JOBD_REDIS_LOOP_H

#include <event2/event.h>
#include <hiredis/async.h>

/* 0, or -1 (out of memory, or AC already attached). */
int redis_loop_attach(redisAsyncContext *ac, struct event_base *base);

#endif
