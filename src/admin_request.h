/* admin_request.h - what the admin listener makes of the bytes a client sent:
 * wait for more, or which answer. Pure (no socket, no loop), so that every
 * byte sequence a client can send is fuzzed (fuzz/fuzz_admin.c); admin.c
 * owns the connections, the deadline and the answers themselves. */
#ifndef JOBD_ADMIN_REQUEST_H
#define JOBD_ADMIN_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#define ADMIN_HEAD_MAX 8192 /* request line and headers; a body is never read */

enum admin_route {
    ADMIN_INCOMPLETE,  /* no empty line yet: read on */
    ADMIN_TOO_LARGE,   /* 431: ADMIN_HEAD_MAX bytes and still no end */
    ADMIN_BAD_REQUEST, /* 400: not "METHOD path HTTP/1.x" */
    ADMIN_NOT_ALLOWED, /* 405: neither GET nor HEAD */
    ADMIN_NOT_FOUND,   /* 404 */
    ADMIN_HEALTHZ,
    ADMIN_METRICS,
};

/* The head read so far: BUF's LEN bytes (not NUL-terminated; BUF may be
 * NULL). Ended by an empty line (CRLF or bare LF lines); only the request
 * line is read, headers are ignored. *HEAD is set for a HEAD request (an
 * answer without its body). */
enum admin_route admin_route(const char *buf, size_t len, bool *head);

#endif
