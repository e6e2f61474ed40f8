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
    if (len == 4 && h[1] >= '0' && h[1] <= '9' && h[2] == '\r') {
        *out = h[1] - '0';      /* most of a stream reply's headers: "*2", "$3" */
        return true;
    }
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
                  not_a_count[] = "RESP filter: an array header that is not a count",
                  too_long[] = "RESP filter: a reply line longer than 64 KiB",
                  too_deep[] = "RESP filter: arrays nested deeper than it follows",
                  too_many[] = "RESP filter: more elements to skip than it can count";

/* Nothing from here on is passed (resp_filter.h). */
static void stop(struct resp_filter *f, const char *why)
{
    f->state = RF_BROKEN;
    f->error = why;
}

void resp_filter_cap(struct resp_filter *f, unsigned depth, uint64_t max_elements)
{
    f->cap_depth = depth;
    f->cap = max_elements;
}

/* A token begins (counted replies only): it is one element of the array
 * open deepest, or, the element of a capped array, hidden. */
static void begin_element(struct resp_filter *f)
{
    if (f->skip) {
        f->skip--;
        f->hide = true;
        return;
    }
    f->hide = false;
    while (f->depth && !f->open[f->depth - 1])
        f->depth--;             /* arrays ended with their last element */
    if (f->depth)
        f->open[f->depth - 1]--;
}

/* What is done with a complete header: passed, passed as the integer of
 * its count (its payload or elements dropped), hidden, or the stream stops. */
enum head_action { HEAD_PASS, HEAD_INTEGER, HEAD_HIDE, HEAD_STOP };

/* An array header announcing N elements (counted replies only). */
static enum head_action take_array(struct resp_filter *f, int64_t n)
{
    f->state = RF_TOKEN;
    if (f->hide) {
        /* Inside a capped array: its elements are skipped with the rest. */
        if (n > 0 && (uint64_t)n > UINT64_MAX - f->skip) {
            stop(f, too_many);
            return HEAD_STOP;
        }
        f->skip += n > 0 ? (uint64_t)n : 0;
        return HEAD_HIDE;
    }
    if (n <= 0)
        return HEAD_PASS;
    if (f->depth == f->cap_depth && (uint64_t)n > f->cap) {
        f->skip = (uint64_t)n;
        f->capped++;
        return HEAD_INTEGER;
    }
    if (f->depth == RESP_FILTER_DEPTH) {
        stop(f, too_deep);
        return HEAD_STOP;
    }
    f->open[f->depth++] = (uint64_t)n;
    return HEAD_PASS;
}

/* The header H (LEN bytes, up to its LF: a bulk's, or a counted reply's
 * array's) is complete: F's state for what follows it. */
static enum head_action take_head(struct resp_filter *f, const char *h, size_t len, uint64_t max)
{
    int64_t n;
    if (!head_length(h, len, &n)) {
        stop(f, h[0] == '$' ? not_a_length : not_a_count);
        return HEAD_STOP;
    }
    if (h[0] == '*')
        return take_array(f, n);
    if (n < 0) {
        f->state = RF_TOKEN;
        return f->hide ? HEAD_HIDE : HEAD_PASS;
    }
    /* The payload and its CRLF; a length near INT64_MAX cannot come
     * (hiredis and Redis stop far below), but must not wrap. */
    f->left = (uint64_t)n + 2;
    if (f->hide) {
        f->state = RF_DROP;
        return HEAD_HIDE;
    }
    if ((uint64_t)n > max) {
        f->state = RF_DROP;
        f->dropped++;
        return HEAD_INTEGER;
    }
    f->state = RF_PASS;
    return HEAD_PASS;
}

void resp_filter_feed(struct resp_filter *f, const char *p, size_t n, uint64_t max,
                      resp_filter_emit *emit, void *arg)
{
    size_t i = 0, from = 0;     /* p[from..i) is to be passed on */
    while (i < n) {
        switch (f->state) {
        case RF_TOKEN: {
            if (f->cap)
                begin_element(f);
            if (p[i] != '$' && (p[i] != '*' || !f->cap)) {
                /* '*' (not counted), ':', '+', '-': a line, passed as it
                 * comes. Anything else too (a RESP3 type byte): hiredis
                 * says what is wrong with it as soon as it sees it. */
                if (f->hide) {
                    if (i > from)
                        emit(arg, p + from, i - from);
                    from = i + 1;
                }
                f->state = RF_LINE;
                f->cr = false;
                f->line_len = 1;
                i++;
                break;
            }
            /* A bulk header, or a counted reply's array header. Seen whole
             * (the common case) it is judged in place, and a kept one goes
             * on with the bytes around it, in one piece; only a replaced
             * one's, or one split across feeds (held in F), is passed on by
             * itself. */
            size_t most = n - i < sizeof(f->head) ? n - i : sizeof(f->head);
            const char *end = memchr(p + i, '\n', most);
            if (end) {
                size_t len = (size_t)(end - p) + 1 - i;
                enum head_action a = take_head(f, p + i, len, max);
                if (a != HEAD_PASS) {
                    if (i > from)
                        emit(arg, p + from, i - from);
                    if (a == HEAD_INTEGER) {
                        emit(arg, ":", 1);
                        emit(arg, p + i + 1, len - 1);
                    }
                    from = i + len;
                }
                i += len;
            } else if (n - i >= sizeof(f->head)) {
                stop(f, p[i] == '$' ? not_a_length : not_a_count); /* no number is that long */
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
                if (f->hide)
                    from = i;
                if (f->line_len == RESP_FILTER_LINE_MAX)
                    stop(f, too_long);
                break;
            }
            size_t at = (size_t)(lf - p);
            bool ended = at > i ? p[at - 1] == '\r' : f->cr;
            f->line_len += at + 1 - i;
            i = at + 1;
            f->cr = false;
            if (f->hide)
                from = i;
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
                enum head_action a = take_head(f, f->head, f->head_len, max);
                if (a == HEAD_INTEGER)
                    f->head[0] = ':';
                if (a == HEAD_PASS || a == HEAD_INTEGER)
                    emit(arg, f->head, f->head_len);
                f->head_len = 0;
            } else if (f->head_len == sizeof(f->head)) {
                stop(f, f->head[0] == '$' ? not_a_length : not_a_count); /* no number is that long */
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
