/* test_resp_filter.c - the RESP filter (resp_filter.h): replies pass byte for
 * byte unless a bulk string is over the limit, which becomes ":<length>"
 * with its payload gone; the same output whether the input comes whole, in
 * two pieces split at every byte, or one byte at a time; and hiredis reads
 * the result as the reply with an integer in the big bulk's place. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "resp_filter.h"

struct out {
    char *p;
    size_t len, cap;
    int pieces;
};

static void collect(void *arg, const char *p, size_t n)
{
    struct out *o = arg;
    assert_true(n > 0);         /* no empty pieces: each costs the reader a call */
    if (o->len + n + 1 > o->cap) {
        o->cap = (o->len + n + 1) * 2;
        o->p = realloc(o->p, o->cap);
        assert_non_null(o->p);
    }
    memcpy(o->p + o->len, p, n);
    o->len += n;
    o->p[o->len] = '\0';
    o->pieces++;
}

/* The filter of the last run(), as it was left. */
static struct resp_filter f;

/* What run() counts (resp_filter_cap()): arrays CAP_DEPTH deep capped at
 * CAP elements; CAP 0, not counted. CAPPED: how many the checks expect. */
static unsigned cap_depth;
static uint64_t cap, capped;

/* IN (N bytes) through a fresh filter in the pieces that CUTS (sorted,
 * inside 0..N, NCUTS of them) mark. */
static struct out run(const char *in, size_t n, uint64_t max, const size_t *cuts, int ncuts,
                      uint64_t *dropped)
{
    struct out o = {0};
    resp_filter_init(&f);
    resp_filter_cap(&f, cap_depth, cap);
    size_t from = 0;
    for (int c = 0; c <= ncuts; c++) {
        size_t to = c < ncuts ? cuts[c] : n;
        resp_filter_feed(&f, in + from, to - from, max, collect, &o);
        from = to;
    }
    if (dropped)
        *dropped = f.dropped;
    return o;
}

/* The output of the last run() is WANT (WANT_LEN bytes), with EXPECTED
 * bulks dropped, and the filter stopped with ERROR (NULL: not stopped). */
static void same(struct out o, uint64_t dropped, const char *want, size_t want_len,
                 uint64_t expected, const char *error)
{
    assert_int_equal(o.len, want_len);
    if (want_len)
        assert_memory_equal(o.p, want, want_len);
    assert_int_equal(dropped, expected);
    assert_int_equal(f.capped, capped);
    if (error) {
        assert_int_equal(f.state, RF_BROKEN);
        assert_string_equal(f.error, error);
    } else {
        assert_int_not_equal(f.state, RF_BROKEN);
        assert_null(f.error);
    }
    free(o.p);
}

/* IN gives WANT (as EXPECTED bulks dropped, and stopped with ERROR) whole,
 * split in two at every byte, and fed a byte at a time. An input of more
 * than 4 kB is split at its first and last 72 bytes and every 509th
 * (every byte would take seconds). */
static void check_error(const char *in, size_t n, uint64_t max, const char *want, size_t want_len,
                        uint64_t expected, const char *error)
{
    uint64_t dropped;
    struct out o = run(in, n, max, NULL, 0, &dropped);
    same(o, dropped, want, want_len, expected, error);
    for (size_t cut = 0; cut <= n; cut++) {
        if (n > 4096 && cut >= 72 && n - cut >= 72 && cut % 509)
            continue;
        o = run(in, n, max, &cut, 1, &dropped);
        same(o, dropped, want, want_len, expected, error);
    }
    size_t *every = malloc((n + 1) * sizeof(*every));
    assert_non_null(every);
    for (size_t i = 0; i < n; i++)
        every[i] = i + 1;
    o = run(in, n, max, every, n ? (int)n - 1 : 0, &dropped);
    same(o, dropped, want, want_len, expected, error);
    free(every);
}

static void check(const char *in, size_t n, uint64_t max, const char *want, size_t want_len,
                  uint64_t expected)
{
    check_error(in, n, max, want, want_len, expected, NULL);
}

#define CHECK_SAME(in, max) check(in, sizeof(in) - 1, max, in, sizeof(in) - 1, 0)

static const char not_a_length[] = "RESP filter: a bulk string header that is not a length",
                  too_long[] = "RESP filter: a reply line longer than 64 KiB";

/* IN stops the filter with ERROR after passing its first WANT_LEN bytes. */
#define CHECK_STOPS(in, want_len, error) \
    check_error(in, sizeof(in) - 1, 1, in, want_len, 0, error)

/* An XREADGROUP reply: nested arrays, bulks holding what looks like RESP
 * ("$", "*", CRLF) and binary, a nil bulk, a nil array, an integer, a
 * status and an error after it: nothing is changed, at any split. */
static const char reply[] =
    "*2\r\n"
    "*2\r\n$10\r\njobd:queue\r\n"
    "*2\r\n"
    "*2\r\n$15\r\n1700000000000-0\r\n"
    "*4\r\n$3\r\njob\r\n$16\r\n$5\r\n*1\r\n\n\r\n\0\xff" "abc\r\n$2\r\nid\r\n$-1\r\n"
    "*2\r\n$15\r\n1700000000001-0\r\n*-1\r\n"
    "*2\r\n$4\r\nnext\r\n*0\r\n"
    ":42\r\n+OK\r\n-ERR $100 is not a length\r\n$0\r\n\r\n";

static void test_small_replies_pass_unchanged(void **state)
{
    (void)state;
    CHECK_SAME(reply, 16);
    CHECK_SAME(reply, 1 << 20);
}

/* Replies that keep every bulk, fed whole, go on in one piece: the reader is
 * fed once per read, as hiredis feeds it. */
static void test_what_is_kept_goes_on_in_one_piece(void **state)
{
    (void)state;
    struct out o = run(reply, sizeof(reply) - 1, 16, NULL, 0, NULL);
    assert_int_equal(o.len, sizeof(reply) - 1);
    assert_int_equal(o.pieces, 1);
    free(o.p);
}

static void test_a_bulk_over_the_limit_becomes_its_length(void **state)
{
    (void)state;
    static const char in[] = "*4\r\n$3\r\njob\r\n$12\r\n{\"x\":\"$3\r\n\"}\r\n"
                             "$2\r\nid\r\n$3\r\nabc\r\n";
    static const char want[] = "*4\r\n$3\r\njob\r\n:12\r\n$2\r\nid\r\n$3\r\nabc\r\n";
    check(in, sizeof(in) - 1, 11, want, sizeof(want) - 1, 1);
}

static void test_a_bulk_of_exactly_the_limit_is_kept(void **state)
{
    (void)state;
    static const char in[] = "*2\r\n$12\r\n{\"x\":\"$3\r\n\"}\r\n$13\r\n{\"x\":\"$3\r\n\"} \r\n";
    static const char want[] = "*2\r\n$12\r\n{\"x\":\"$3\r\n\"}\r\n:13\r\n";
    check(in, sizeof(in) - 1, 12, want, sizeof(want) - 1, 1);
}

static void test_nil_and_empty_bulks_are_never_dropped(void **state)
{
    (void)state;
    CHECK_SAME("*3\r\n$-1\r\n$0\r\n\r\n*-1\r\n", 0);
}

/* A line ends at CRLF, as hiredis reads it: what follows a lone LF is still
 * the line, however much it looks like a bulk header. */
static void test_a_line_ends_at_crlf_only(void **state)
{
    (void)state;
    CHECK_SAME("+a\n$20\r\n:1\r\n-b\r$20\n\r\n*1\r\n$1\r\nx\r\n", 1);
}

/* What is not RESP the filter knows stops the stream at its first byte:
 * passed on, a header hiredis holds until its CRLF ("$12x" and then
 * gigabytes) bypassed the filter, and so did every bulk after it. The
 * replies before it go on. */
static void test_a_broken_header_stops_the_stream(void **state)
{
    (void)state;
    CHECK_STOPS("*1\r\n$12x\r\n$99\r\nabc", 4, not_a_length);
    CHECK_STOPS(":1\r\n$123456789012345678901234567890\r\n$99\r\n", 4, not_a_length);
    /* Found broken as soon as its bytes show it, however they come. */
    CHECK_STOPS("$12345678901234567890123", 0, not_a_length);
    CHECK_STOPS("$99999999999999999999\r\n$99\r\n", 0, not_a_length);   /* past 2^64 */
    CHECK_STOPS("$9223372036854775808\r\n$99\r\n", 0, not_a_length);    /* past 2^63-1 */
    CHECK_STOPS("$5\n$99\r\n", 0, not_a_length);                         /* no CR */
    CHECK_STOPS("$\r\n$99\r\n", 0, not_a_length);
    CHECK_STOPS("$-\r\n", 0, not_a_length);
    CHECK_STOPS("$+5\r\nhello\r\n", 0, not_a_length);
    CHECK_STOPS("$ 5\r\nhello\r\n", 0, not_a_length);
    /* RESP3's streamed string (HELLO 3, which jobd never sends). */
    CHECK_STOPS("$?\r\n;4\r\nHell\r\n;0\r\n", 0, not_a_length);
    /* The largest length there is is a length: dropped, not broken. */
    static const char in[] = "$9223372036854775807\r\nabc";
    static const char want[] = ":9223372036854775807\r\n";
    check(in, sizeof(in) - 1, 1, want, sizeof(want) - 1, 1);
}

/* The first reply hiredis reads from O's bytes. */
static redisReply *first_reply(struct out o)
{
    redisReader *reader = redisReaderCreate();
    assert_non_null(reader);
    assert_int_equal(redisReaderFeed(reader, o.p, o.len), REDIS_OK);
    redisReply *r = NULL;
    assert_int_equal(redisReaderGetReply(reader, (void **)&r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(reader);
    return r;
}

/* ---- counted replies: the stream connection's (XREADGROUP) ---------------- */

static const char not_a_count[] = "RESP filter: an array header that is not a count",
                  too_deep[] = "RESP filter: arrays nested deeper than it follows";

/* Counted, with an entry's fields (depth 4) capped at 4 elements, and
 * CAPPED arrays expected to be. */
static void count_fields(uint64_t expected_capped)
{
    cap_depth = 4;
    cap = 4;
    capped = expected_capped;
}

static void uncounted(void)
{
    cap_depth = 0;
    cap = capped = 0;
}

/* Fields exactly at the cap pass, and so do longer arrays at every other
 * depth (the reply's streams, a stream's entries, a reply after it). */
static void test_fields_at_the_cap_pass(void **state)
{
    (void)state;
    count_fields(0);
    CHECK_SAME("*1\r\n*2\r\n$1\r\ns\r\n*6\r\n"
               "*2\r\n$3\r\n1-0\r\n*4\r\n$3\r\njob\r\n$2\r\n{}\r\n$2\r\nid\r\n$1\r\nx\r\n"
               "*2\r\n$3\r\n1-1\r\n*-1\r\n"
               "*2\r\n$3\r\n1-2\r\n*0\r\n"
               "*2\r\n$3\r\n1-3\r\n*2\r\n$3\r\njob\r\n$-1\r\n"
               "*2\r\n$3\r\n1-4\r\n*4\r\n:1\r\n+a\r\n-b\r\n$0\r\n\r\n"
               "*2\r\n$3\r\n1-5\r\n*2\r\n$3\r\njob\r\n$2\r\n{}\r\n"
               "*6\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n:6\r\n+OK\r\n",
               1 << 20);
    uncounted();
}

/* Fields one over the cap (an odd count only a hostile server sends) and
 * many over: each becomes the integer of its count, its elements skipped
 * whatever they are (a bulk over the limit not counted as dropped, nested
 * arrays as deep as they go, lines, nils), at any split; the entries after
 * it and the next reply pass. */
static void test_fields_over_the_cap_become_their_count(void **state)
{
    (void)state;
    static const char in[] =
        "*1\r\n*2\r\n$1\r\ns\r\n*4\r\n"
        "*2\r\n$3\r\n1-0\r\n*5\r\n$3\r\njob\r\n$2\r\n{}\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        "*2\r\n$3\r\n1-1\r\n*4\r\n$3\r\njob\r\n$2\r\n{}\r\n$2\r\nid\r\n$1\r\nx\r\n"
        "*2\r\n$3\r\n1-2\r\n*9\r\n$3\r\njob\r\n$16\r\n*1\r\n$1\r\n:7\r\n*2\r\n\r\n"
        ":1\r\n+OK\r\n-ERR $5\r\n$-1\r\n*-1\r\n*0\r\n"
        "*2\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n$3\r\nabc\r\n"
        "*2\r\n$1\r\nx\r\n$1\r\ny\r\n"
        "*2\r\n$3\r\n1-3\r\n*2\r\n$3\r\njob\r\n$2\r\n{}\r\n"
        "*1\r\n$10\r\n0123456789\r\n";
    static const char want[] =
        "*1\r\n*2\r\n$1\r\ns\r\n*4\r\n"
        "*2\r\n$3\r\n1-0\r\n:5\r\n"
        "*2\r\n$3\r\n1-1\r\n*4\r\n$3\r\njob\r\n$2\r\n{}\r\n$2\r\nid\r\n$1\r\nx\r\n"
        "*2\r\n$3\r\n1-2\r\n:9\r\n"
        "*2\r\n$3\r\n1-3\r\n*2\r\n$3\r\njob\r\n$2\r\n{}\r\n"
        "*1\r\n:10\r\n";
    count_fields(2);
    check(in, sizeof(in) - 1, 8, want, sizeof(want) - 1, 1);
    uncounted();
}

/* hiredis reads the capped entry as [id, integer], and the entry after it
 * whole. */
static void test_hiredis_reads_the_field_count(void **state)
{
    (void)state;
    static const char in[] = "*1\r\n*2\r\n$1\r\ns\r\n*2\r\n"
                             "*2\r\n$3\r\n1-0\r\n*6\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
                             "$1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n"
                             "*2\r\n$3\r\n1-1\r\n*2\r\n$3\r\njob\r\n$2\r\n{}\r\n";
    count_fields(1);
    struct out o = run(in, sizeof(in) - 1, 1 << 20, NULL, 0, NULL);
    uncounted();
    redisReply *r = first_reply(o);
    const redisReply *entries = r->element[0]->element[1];
    assert_int_equal(entries->elements, 2);
    assert_int_equal(entries->element[0]->element[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(entries->element[0]->element[1]->integer, 6);
    assert_int_equal(entries->element[1]->element[1]->type, REDIS_REPLY_ARRAY);
    assert_int_equal(entries->element[1]->element[1]->elements, 2);
    freeReplyObject(r);
    free(o.p);
}

/* Counted, an array header must be a count, and arrays may not nest deeper
 * than the filter follows (outside a capped array: inside one, nesting is
 * only more to skip). Not counted, both pass, as any line. */
static void test_counted_arrays_that_cannot_be_followed_stop_the_stream(void **state)
{
    (void)state;
    count_fields(0);
    CHECK_STOPS(":1\r\n*1x\r\n:1\r\n", 4, not_a_count);
    CHECK_STOPS("*-\r\n", 0, not_a_count);
    CHECK_STOPS("*123456789012345678901234567890\r\n", 0, not_a_count);
    CHECK_STOPS("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 32, too_deep);
    uncounted();
    CHECK_SAME(":1\r\n*1x\r\n", 1);
    CHECK_SAME("*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", 1);
}

/* Not counted (the command connection), a long fields array is passed. */
static void test_uncounted_fields_pass(void **state)
{
    (void)state;
    CHECK_SAME("*2\r\n$3\r\n1-0\r\n*6\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n:6\r\n", 16);
}

/* hiredis reads the N bytes at P as a protocol error that says SAYS. */
static void refused_by_hiredis(const char *p, size_t n, const char *says)
{
    redisReader *reader = redisReaderCreate();
    assert_non_null(reader);
    assert_int_equal(redisReaderFeed(reader, p, n), REDIS_OK);
    void *r = NULL;
    assert_int_equal(redisReaderGetReply(reader, &r), REDIS_ERR);
    assert_int_equal(reader->err, REDIS_ERR_PROTOCOL);
    assert_non_null(strstr(reader->errstr, says));
    redisReaderFree(reader);
}

/* The filter judges a bulk's length, hiredis its sign: a negative one other
 * than the nil -1 is passed as a nil, and hiredis refuses it, so the
 * connection is dropped all the same. */
static void test_negative_lengths_reach_hiredis(void **state)
{
    (void)state;
    static const char in[] = "*2\r\n$-1\r\n$-5\r\n$20\r\n01234567890123456789\r\n";
    static const char want[] = "*2\r\n$-1\r\n$-5\r\n:20\r\n";
    check(in, sizeof(in) - 1, 1, want, sizeof(want) - 1, 1);
    CHECK_SAME("*-1\r\n*-5\r\n", 1);
    refused_by_hiredis(want, sizeof(want) - 1, "out of range");
}

/* A RESP3 type byte is a line to the filter, passed at once; hiredis
 * (RESP2 only) refuses it as it arrives. '=' and '!' carry a length, but
 * the connection ends at their type byte. */
static void test_resp3_type_bytes_reach_hiredis(void **state)
{
    (void)state;
    static const char *const in[] = {"%1\r\n+a\r\n:1\r\n",
                                     "=15\r\ntxt:Some string\r\n",
                                     "!21\r\nSYNTAX invalid syntax\r\n",
                                     ",1.23\r\n",
                                     "#t\r\n",
                                     "_\r\n",
                                     ">2\r\n+a\r\n+b\r\n",
                                     "~1\r\n:1\r\n"};
    for (size_t i = 0; i < sizeof(in) / sizeof(*in); i++) {
        check(in[i], strlen(in[i]), 1, in[i], strlen(in[i]), 0);
        struct out o = run(in[i], 1, 1, NULL, 0, NULL);  /* the type byte alone */
        refused_by_hiredis(o.p, o.len, "reply type byte");
        free(o.p);
    }
}

/* The filter does not follow arrays: a bulk over the limit is dropped at
 * any depth, and what hiredis refuses (nesting past 7) it refuses. */
static void test_nesting_is_not_tracked(void **state)
{
    (void)state;
    char in[256] = "", want[256] = "";
    for (int d = 0; d < 12; d++) {
        strcat(in, "*2\r\n");
        strcat(want, "*2\r\n");
    }
    strcat(in, "$20\r\n01234567890123456789\r\n:1\r\n");
    strcat(want, ":20\r\n:1\r\n");
    check(in, strlen(in), 19, want, strlen(want), 1);
    refused_by_hiredis(want, strlen(want), "nested multi bulk");
}

/* A line (error, status, integer, array header) runs up to its CRLF, and
 * hiredis holds it whole until then: one longer than Redis ever sends
 * stops the stream once RESP_FILTER_LINE_MAX bytes of it went by, however
 * it comes. One of exactly that length is passed. (The limit is in the
 * last 72 bytes of each input, where every split is tried.) */
static void test_a_line_too_long_stops_the_stream(void **state)
{
    (void)state;
    size_t n = RESP_FILTER_LINE_MAX + 64;
    char *in = malloc(n + 1);
    assert_non_null(in);
    memcpy(in, ":1\r\n-ERR ", 9);
    memset(in + 9, 'x', n - 9);
    in[n] = '\0';
    /* Error texts with LFs and CRs in them are one line all the same. */
    in[100] = '\n';
    in[200] = '\r';
    in[n - 2] = '\r';
    in[n - 1] = '\n';
    check_error(in, n, 1, in, 4 + RESP_FILTER_LINE_MAX, 0, too_long);
    /* The line ending just at the limit is whole, and what follows goes on. */
    memcpy(in + 4 + RESP_FILTER_LINE_MAX - 2, "\r\n:2\r\n", 6);
    check(in, 4 + RESP_FILTER_LINE_MAX + 4, 1, in, 4 + RESP_FILTER_LINE_MAX + 4, 0);
    /* A lone LF as its last byte does not end it. */
    in[4 + RESP_FILTER_LINE_MAX - 2] = 'x';
    check_error(in, 4 + RESP_FILTER_LINE_MAX + 4, 1, in, 4 + RESP_FILTER_LINE_MAX, 0, too_long);
    free(in);
}

/* A bulk of many megabytes fed in small pieces: dropped as it comes, and the
 * replies after it are whole. */
static void test_a_big_bulk_is_dropped_in_pieces(void **state)
{
    (void)state;
    size_t big = 5 << 20;
    const char *head = "*2\r\n$7\r\n1-0\r\nab\r\n$5242880\r\n", *tail = "\r\n:1\r\n$2\r\nok\r\n";
    size_t n = strlen(head) + big + strlen(tail);
    char *in = malloc(n);
    assert_non_null(in);
    memcpy(in, head, strlen(head));
    memset(in + strlen(head), '$', big);
    memcpy(in + strlen(head) + big, tail, strlen(tail));
    struct out o = {0};
    resp_filter_init(&f);
    for (size_t at = 0; at < n; at += 4093)
        resp_filter_feed(&f, in + at, n - at < 4093 ? n - at : 4093, 1 << 20, collect, &o);
    const char *want = "*2\r\n$7\r\n1-0\r\nab\r\n:5242880\r\n:1\r\n$2\r\nok\r\n";
    assert_int_equal(o.len, strlen(want));
    assert_memory_equal(o.p, want, o.len);
    assert_int_equal(f.dropped, 1);
    assert_int_equal(f.state, RF_TOKEN);
    free(o.p);
    free(in);
}

/* hiredis reads the filtered bytes as the reply, with the integer where the
 * big value was. */
static void test_hiredis_reads_the_integer(void **state)
{
    (void)state;
    static const char in[] = "*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$3\r\njob\r\n$20\r\n"
                             "01234567890123456789\r\n";
    struct out o = run(in, sizeof(in) - 1, 19, NULL, 0, NULL);
    redisReply *r = first_reply(o);
    const redisReply *fields = r->element[0]->element[1];
    assert_int_equal(fields->element[0]->type, REDIS_REPLY_STRING);
    assert_int_equal(fields->element[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(fields->element[1]->integer, 20);
    freeReplyObject(r);
    free(o.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_replies_pass_unchanged),
        cmocka_unit_test(test_what_is_kept_goes_on_in_one_piece),
        cmocka_unit_test(test_a_bulk_over_the_limit_becomes_its_length),
        cmocka_unit_test(test_a_bulk_of_exactly_the_limit_is_kept),
        cmocka_unit_test(test_nil_and_empty_bulks_are_never_dropped),
        cmocka_unit_test(test_a_line_ends_at_crlf_only),
        cmocka_unit_test(test_a_broken_header_stops_the_stream),
        cmocka_unit_test(test_negative_lengths_reach_hiredis),
        cmocka_unit_test(test_resp3_type_bytes_reach_hiredis),
        cmocka_unit_test(test_nesting_is_not_tracked),
        cmocka_unit_test(test_a_line_too_long_stops_the_stream),
        cmocka_unit_test(test_a_big_bulk_is_dropped_in_pieces),
        cmocka_unit_test(test_hiredis_reads_the_integer),
        cmocka_unit_test(test_fields_at_the_cap_pass),
        cmocka_unit_test(test_fields_over_the_cap_become_their_count),
        cmocka_unit_test(test_hiredis_reads_the_field_count),
        cmocka_unit_test(test_counted_arrays_that_cannot_be_followed_stop_the_stream),
        cmocka_unit_test(test_uncounted_fields_pass),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
