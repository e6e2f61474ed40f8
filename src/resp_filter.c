/* resp_filter.c - drops oversized bulk strings from RESP2 (see resp_filter.h). */
#include <stdbool.h>
#include <string.h>

#include "resp_filter.h"

void resp_filter_init(struct resp_filter *f)
{
    memset(f, 0, sizeof(*f));
    f->state = RF_TOKEN;
}

/* The length a complete bulk header ("$...\r\n", LEN bytes) announces, in
 * *OUT (-1 for any negative one: a nil, or a length hiredis refuses). False
 * when it is not a number followed by CRLF. */
static bool head_length(const char *h, size_t len, int64_t *out)
{
    size_t i = 1;
    bool negative = len > 1 && h[1] == '-';
    if (negative)
        i++;
    if (len < i + 3 || h[len - 2] != '\r')
        return false;
    uint64_t v = 0;
    for (; i < len - 2; i++) {
        if (h[i] < '0' || h[i] > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(h[i] - '0');
    }
    if (v > INT64_MAX)
        return false;
    *out = negative ? -1 : (int64_t)v;
    return true;
}

static const char not_a_length[] = "RESP filter: a bulk string header that is not a length",
                  too_long[] = "RESP filter: a reply line longer than 64 KiB";

/* Nothing from here on is passed (resp_filter.h). */
static void stop(struct resp_filter *f, const char *why)
{
    f->state = RF_BROKEN;
    f->error = why;
}

/* The bulk header H (LEN bytes, up to its LF) is complete: F's state for
 * what follows it. True when the header is to be passed on as an integer,
 * its payload dropped. */
static bool take_head(struct resp_filter *f, const char *h, size_t len, uint64_t max)
{
    int64_t n;
    if (!head_length(h, len, &n)) {
        stop(f, not_a_length);
        return false;
    }
    if (n < 0) {
        f->state = RF_TOKEN;
        return false;
    }
    /* The payload and its CRLF; a length near INT64_MAX cannot come
     * (hiredis and Redis stop far below), but must not wrap. */
    f->left = (uint64_t)n + 2;
    if ((uint64_t)n > max) {
        f->state = RF_DROP;
        f->dropped++;
        return true;
    }
    f->state = RF_PASS;
    return false;
}

void resp_filter_feed(struct resp_filter *f, const char *p, size_t n, uint64_t max,
                      resp_filter_emit *emit, void *arg)
{
    size_t i = 0, from = 0;     /* p[from..i) is to be passed on */
    while (i < n) {
        switch (f->state) {
        case RF_TOKEN: {
            if (p[i] != '$') {
                /* '*', ':', '+', '-': a line, passed as it comes. Anything
                 * else too (a RESP3 type byte): hiredis says what is wrong
                 * with it as soon as it sees it. */
                f->state = RF_LINE;
                f->cr = false;
                f->line_len = 1;
                i++;
                break;
            }
            /* A bulk header. Seen whole (the common case) it is judged in
             * place, and a kept one goes on with the bytes around it, in one
             * piece; only a dropped one's, or one split across feeds (held
             * in F), is passed on by itself. */
            size_t most = n - i < sizeof(f->head) ? n - i : sizeof(f->head);
            const char *end = memchr(p + i, '\n', most);
            if (end) {
                size_t len = (size_t)(end - p) + 1 - i;
                bool drop = take_head(f, p + i, len, max);
                if (drop || f->state == RF_BROKEN) {
                    if (i > from)
                        emit(arg, p + from, i - from);
                    if (drop) {
                        emit(arg, ":", 1);
                        emit(arg, p + i + 1, len - 1);
                    }
                    from = i + len;
                }
                i += len;
            } else if (n - i >= sizeof(f->head)) {
                stop(f, not_a_length);          /* no number is that long */
            } else {
                if (i > from)
                    emit(arg, p + from, i - from);
                f->head_len = n - i;
                memcpy(f->head, p + i, f->head_len);
                f->state = RF_HEAD;
                i = from = n;
            }
            break;
        }
        case RF_LINE: {
            /* Up to CRLF, as hiredis reads a line: a lone LF is part of it.
             * Looked for only as far as the line may go, so it stops at
             * the same byte however the input is cut. */
            size_t room = RESP_FILTER_LINE_MAX - f->line_len, most = n - i < room ? n - i : room;
            const char *lf = memchr(p + i, '\n', most);
            if (!lf) {
                f->cr = p[i + most - 1] == '\r';
                f->line_len += most;
                i += most;
                if (f->line_len == RESP_FILTER_LINE_MAX)
                    stop(f, too_long);
                break;
            }
            size_t at = (size_t)(lf - p);
            bool ended = at > i ? p[at - 1] == '\r' : f->cr;
            f->line_len += at + 1 - i;
            i = at + 1;
            f->cr = false;
            if (ended)
                f->state = RF_TOKEN;
            else if (f->line_len == RESP_FILTER_LINE_MAX)
                stop(f, too_long);
            break;
        }
        case RF_HEAD:
            while (i < n && f->head_len < sizeof(f->head) && p[i] != '\n')
                f->head[f->head_len++] = p[i++];
            if (i < n && f->head_len < sizeof(f->head)) {
                f->head[f->head_len++] = p[i++];       /* the '\n' */
                if (take_head(f, f->head, f->head_len, max))
                    f->head[0] = ':';
                if (f->state != RF_BROKEN)
                    emit(arg, f->head, f->head_len);
                f->head_len = 0;
            } else if (f->head_len == sizeof(f->head)) {
                stop(f, not_a_length);                  /* no number is that long */
                f->head_len = 0;
            }
            from = i;
            break;
        case RF_PASS:
        case RF_DROP: {
            uint64_t k = n - i < f->left ? n - i : f->left;
            i += (size_t)k;
            f->left -= k;
            if (f->state == RF_DROP)
                from = i;
            if (!f->left)
                f->state = RF_TOKEN;
            break;
        }
        case RF_BROKEN:
            /* What came before the point it stopped at goes on (the
             * replies whole in it can be read); nothing after. */
            if (i > from)
                emit(arg, p + from, i - from);
            i = from = n;
            break;
        }
    }
    if (i > from)
        emit(arg, p + from, i - from);
}
