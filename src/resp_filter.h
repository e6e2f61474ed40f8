/* resp_filter.h - drops oversized bulk strings from a RESP2 byte stream.
 *
 * hiredis 0.14.1 reads a bulk string whole before it hands over the reply,
 * whatever its length: one stream entry of 512 MB (Redis's
 * proto-max-bulk-len) is 512 MB in jobd before it can be refused as
 * too_large, and a few of them get the daemon OOM-killed, again after every
 * restart since they stay pending. This filter sits between the socket and
 * hiredis's reader: a bulk string longer than a limit is passed on as the
 * integer reply ":<length>\r\n" (the header's digits, so the same bytes
 * count), and its payload is dropped as it arrives, never buffered. Redis
 * never sends an integer where a stream entry's field or value is, so the
 * reader of the reply knows what it means (intake_parse_entry()).
 *
 * Cheap on the hot path: only the type byte and header of each token are
 * looked at; the payload of a bulk under the limit is skipped by its length,
 * not scanned. The filter is a stream state machine: a token may be split
 * across feeds at any byte.
 *
 * Anything that is not RESP2 as the filter knows it (a bulk header too long
 * or not a number) or a line (status, error, integer, array header) longer
 * than RESP_FILTER_LINE_MAX stops the stream there: nothing from that point
 * on is passed, and F->error says why, for the caller to drop the
 * connection. Passing it on, as the filter first did, handed hiredis a
 * token it holds whole until its CRLF, however long: a header "$12x" or an
 * error line followed by gigabytes without CRLF was all held, the filter
 * bypassed. Redis never sends either; only something else on the port (or
 * in between) can.
 *
 * Counted replies (resp_filter_cap()): the same for element counts. hiredis
 * makes a redisReply of every element (about 80 bytes with its string,
 * however short the string), so an array of a million one-byte strings is
 * 7 MB of RESP but some 100 MB in the reader, and no bulk in it is over
 * the limit. On a connection whose replies all have a known shape (the
 * stream connection: XREADGROUP's, and replies without arrays that deep),
 * the filter follows the nesting with a stack of the elements each open
 * array still has to come, and an array at the capped depth with more
 * elements than the cap is passed on as the integer ":<count>", its
 * elements skipped as they arrive (a bulk's payload dropped, an array's
 * elements skipped with the rest), never passed to hiredis. Arrays nested
 * deeper than RESP_FILTER_DEPTH, or an array header that is not a count,
 * stop the stream as above.
 */
#ifndef JOBD_RESP_FILTER_H
#define JOBD_RESP_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "$" then up to 20 characters ("-1", a length of up to 19 digits), "\r\n". */
#define RESP_FILTER_HEAD_MAX 24

/* The longest line passed, type byte and CRLF included. Redis's lines to
 * jobd are counts, integers, "+OK"-like statuses and error texts of at
 * most a few hundred bytes (it cuts what it quotes of a command to 128). */
#define RESP_FILTER_LINE_MAX (64 * 1024)

/* The arrays a counted reply may nest: XREADGROUP's fields array is the
 * fifth (streams, [stream, entries], entries, [id, fields], fields). */
#define RESP_FILTER_DEPTH 8

struct resp_filter {
    enum { RF_TOKEN, RF_LINE, RF_HEAD, RF_PASS, RF_DROP, RF_BROKEN } state;
    uint64_t left;              /* RF_PASS, RF_DROP: payload and CRLF bytes still to come */
    bool cr;                    /* RF_LINE: the last byte seen was CR */
    size_t line_len;            /* RF_LINE: bytes of the line so far, type byte included */
    size_t head_len;            /* RF_HEAD: bytes of the bulk header held in head */
    char head[RESP_FILTER_HEAD_MAX];
    uint64_t dropped;           /* bulk strings dropped so far */
    const char *error;          /* RF_BROKEN: why the stream stopped (a static string) */
    /* Counted replies only (cap non-zero): */
    unsigned cap_depth;         /* arrays this deep (0: a reply itself) are capped... */
    uint64_t cap;               /* ...at this many elements */
    unsigned depth;             /* arrays open */
    uint64_t open[RESP_FILTER_DEPTH]; /* elements still to come of each */
    uint64_t skip;              /* elements of a capped array still to skip */
    bool hide;                  /* the current token is one of them */
    uint64_t capped;            /* arrays capped so far */
};

/* Receives the filtered bytes, in order, in one or more pieces per feed. */
typedef void resp_filter_emit(void *arg, const char *p, size_t n);

void resp_filter_init(struct resp_filter *f);

/* Makes F count the elements of arrays (see above): an array DEPTH arrays
 * deep (0: a reply) with more than MAX_ELEMENTS elements is passed as
 * ":<count>" and its elements skipped. MAX_ELEMENTS 0: not counted (the
 * default). Set before the first feed: the count starts at a reply. */
void resp_filter_cap(struct resp_filter *f, unsigned depth, uint64_t max_elements);

/* Filter the N bytes at P: bulk strings longer than MAX bytes are replaced
 * as said above, everything else goes to EMIT unchanged. A bulk header split
 * across feeds is held in F (at most RESP_FILTER_HEAD_MAX bytes) until its
 * end is seen. Once F->state is RF_BROKEN nothing more is emitted. */
void resp_filter_feed(struct resp_filter *f, const char *p, size_t n, uint64_t max,
                      resp_filter_emit *emit, void *arg);

#endif
