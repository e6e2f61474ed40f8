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
#include <stdbool.h>
#include <stdint.h>

/* Slack over limits.max_job_bytes: what a filtered connection still reads
 * whole. A bulk string as long as that is no field name, entry id or reply
 * jobd itself wrote (its worker snapshot), and an envelope that long is
 * still read and refused as too_large with its first bytes kept. */
#define REDIS_LOOP_BULK_SLACK (64 * 1024)

/* The most fields (name-value pairs) a stream entry read on a connection
 * attached with STREAM_READS may have. A producer writes "job" and perhaps
 * a few fields of its own (jobd's requeues add a few); the cap leaves room
 * for many more, and bounds what one entry costs in hiredis's reader
 * (about 80 bytes an element: 256 of them, some 20 KB) to tens of KB
 * instead of the 80 MB of one with Redis's million arguments. */
#define REDIS_LOOP_MAX_ENTRY_FIELDS 128

/* Where XREADGROUP's reply holds an entry's fields: in the reply's array
 * of streams, a stream's [name, entries], its entries, an entry's [id,
 * fields] (resp_filter.h). */
#define REDIS_LOOP_FIELDS_DEPTH 4

/* 0, or -1 (out of memory, or AC already attached).
 *
 * MAX_JOB_BYTES non-NULL: AC's replies are read through resp_filter.h, and
 * any bulk string longer than *MAX_JOB_BYTES + REDIS_LOOP_BULK_SLACK reaches
 * hiredis as the integer reply of its length, its bytes dropped unread:
 * hiredis 0.14.1 would hold it whole first (a stream entry of Redis's
 * proto-max-bulk-len is 512 MB). *MAX_JOB_BYTES is read at every read of
 * the socket, so a reload applies at once. A reply the filter cannot follow
 * (not RESP2, or a line over RESP_FILTER_LINE_MAX) drops the connection
 * with the filter's reason as its error.
 *
 * STREAM_READS (with MAX_JOB_BYTES): AC receives XREADGROUP replies and
 * replies with no arrays as deep as its fields (AUTH, SELECT, HELLO, XGROUP,
 * CLIENT ID, ZREVRANGEBYSCORE), so an array at REDIS_LOOP_FIELDS_DEPTH is
 * an entry's fields: one with more than REDIS_LOOP_MAX_ENTRY_FIELDS fields
 * reaches hiredis as the integer of its element count, the elements skipped
 * unread. A connection whose replies are not all of that shape must not set
 * it: another reply's arrays that deep would be cut. */
int redis_loop_attach(redisAsyncContext *ac, struct event_base *base, const int64_t *max_job_bytes,
                      bool stream_reads);

/* How many times AC's socket was found readable so far: bytes arrived, or
 * its end. */
uint64_t redis_loop_reads(const redisAsyncContext *ac);

#endif
