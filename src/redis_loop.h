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
 * attached with a FIELDS_DEPTH may have. A producer writes "job" and
 * perhaps a few fields of its own (jobd's requeues add a few); the cap
 * leaves room for many more, and bounds what one entry costs in hiredis's
 * reader (about 80 bytes an element: 256 of them, some 20 KB) to tens of KB
 * instead of the 80 MB of one with Redis's million arguments. */
#define REDIS_LOOP_MAX_ENTRY_FIELDS 128

/* Where an entry's fields are in the replies that bring entries
 * (resp_filter.h counts a reply itself as depth 0). XREADGROUP, on the
 * stream connection: in the reply's array of streams, a stream's [name,
 * entries], its entries, an entry's [id, fields]. */
#define REDIS_LOOP_FIELDS_DEPTH 4
/* XCLAIM and XRANGE, on the command connection (reclaim.c): in the reply's
 * entries, an entry's [id, fields]. */
#define REDIS_LOOP_CLAIMED_FIELDS_DEPTH 2

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
 * FIELDS_DEPTH (non-zero, with MAX_JOB_BYTES): every array that deep in any
 * of AC's replies is an entry's fields, so one with more than
 * REDIS_LOOP_MAX_ENTRY_FIELDS fields reaches hiredis as the integer of its
 * element count, the elements skipped unread. The caller vouches for the
 * shapes of all its replies: another reply's array that deep would be cut.
 * The stream connection reads XREADGROUP and replies with no arrays that
 * deep (AUTH, SELECT, HELLO, XGROUP, CLIENT ID, ZREVRANGEBYSCORE). The
 * command connection reads XCLAIM and XRANGE; its other replies have no
 * array that deep but small ones: XPENDING's and XINFO GROUPS' entries
 * (depth 1), EXEC's replies to writes (depth 1, none an array), the EVAL
 * scripts' flat tables, HELLO's modules (a few fields each, depth 2). */
int redis_loop_attach(redisAsyncContext *ac, struct event_base *base, const int64_t *max_job_bytes,
                      unsigned fields_depth);

/* How many times AC's socket was found readable so far: bytes arrived, or
 * its end. */
uint64_t redis_loop_reads(const redisAsyncContext *ac);

#endif
