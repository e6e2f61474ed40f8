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

/* IN (N bytes) through a fresh filter in the pieces that CUTS (sorted,
 * inside 0..N, NCUTS of them) mark. */
static struct out run(const char *in, size_t n, uint64_t max, const size_t *cuts, int ncuts,
                      uint64_t *dropped)
{
    struct resp_filter f;
    struct out o = {0};
    resp_filter_init(&f);
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

/* IN gives WANT (as EXPECTED bulks dropped) whole, split in two at every
 * byte, and fed a byte at a time. */
static void check(const char *in, size_t n, uint64_t max, const char *want, size_t want_len,
                  uint64_t expected)
{
    uint64_t dropped;
    struct out o = run(in, n, max, NULL, 0, &dropped);
    assert_int_equal(o.len, want_len);
    assert_memory_equal(o.p, want, want_len);
    assert_int_equal(dropped, expected);
    free(o.p);
    for (size_t cut = 0; cut <= n; cut++) {
        o = run(in, n, max, &cut, 1, &dropped);
        assert_int_equal(o.len, want_len);
        assert_memory_equal(o.p, want, want_len);
        assert_int_equal(dropped, expected);
        free(o.p);
    }
    size_t *every = malloc((n + 1) * sizeof(*every));
    assert_non_null(every);
    for (size_t i = 0; i < n; i++)
        every[i] = i + 1;
    o = run(in, n, max, every, n ? (int)n - 1 : 0, &dropped);
    assert_int_equal(o.len, want_len);
    assert_memory_equal(o.p, want, want_len);
    assert_int_equal(dropped, expected);
    free(o.p);
    free(every);
}

#define CHECK_SAME(in, max) check(in, sizeof(in) - 1, max, in, sizeof(in) - 1, 0)

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

/* What is not RESP the filter knows is passed as it is, from there on. */
static void test_a_broken_header_passes_through(void **state)
{
    (void)state;
    CHECK_SAME("*1\r\n$12x\r\n$99\r\nabc", 1);
    CHECK_SAME("$123456789012345678901234567890\r\n$99\r\n", 1);
    /* Found broken as soon as its bytes show it, however they come: at the
     * end of the input it is passed on, not held. */
    CHECK_SAME("$12345678901234567890123", 1);
    CHECK_SAME("$99999999999999999999\r\n$99\r\n", 1);   /* past 2^64 */
    CHECK_SAME("$5\n$99\r\n", 1);                         /* no CR */
    CHECK_SAME("$\r\n$99\r\n", 1);
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
    struct resp_filter f;
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
    redisReader *reader = redisReaderCreate();
    assert_non_null(reader);
    assert_int_equal(redisReaderFeed(reader, o.p, o.len), REDIS_OK);
    redisReply *r = NULL;
    assert_int_equal(redisReaderGetReply(reader, (void **)&r), REDIS_OK);
    assert_non_null(r);
    const redisReply *fields = r->element[0]->element[1];
    assert_int_equal(fields->element[0]->type, REDIS_REPLY_STRING);
    assert_int_equal(fields->element[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(fields->element[1]->integer, 20);
    freeReplyObject(r);
    redisReaderFree(reader);
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
        cmocka_unit_test(test_a_broken_header_passes_through),
        cmocka_unit_test(test_a_big_bulk_is_dropped_in_pieces),
        cmocka_unit_test(test_hiredis_reads_the_integer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
