/* test_envelope.c - PROTOCOL §2: every common field, valid and invalid, and
 * the type fields of sleep, checked through envelope_parse(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "daemon.h"
#include "envelope.h"
#include "executor.h"
#include "result.h"

static struct daemon d;

static int setup(void **state)
{
    return config_defaults(&d.cfg);
}

static int teardown(void **state)
{
    config_free(&d.cfg);
    return 0;
}

struct parsed {
    struct job job;
    struct job_error err;
    int rc;
};

static struct parsed *parse_queued(const char *text, int64_t queued_at)
{
    struct parsed *p = calloc(1, sizeof(*p));
    p->job.d = &d;
    p->job.raw = strdup(text);
    p->job.raw_len = strlen(text);
    p->job.queued_at = queued_at;
    p->rc = envelope_parse(&p->job, &d.cfg, &p->err);
    return p;
}

static struct parsed *parse(const char *text)
{
    return parse_queued(text, 1000000);
}

static void release(struct parsed *p)
{
    if (p->job.exec && p->job.exec->free)
        p->job.exec->free(&p->job);
    json_decref(p->job.envelope);
    json_decref(p->job.spec);
    free(p->job.raw);
    free(p->job.reply_to);
    free(p);
}

/* Parse TEXT, expect failure with CODE and a message containing WORDS. */
static void expect_error(const char *text, const char *code, const char *words)
{
    struct parsed *p = parse(text);
    if (p->rc == 0)
        fail_msg("accepted: %s", text);
    assert_string_equal(p->err.code, code);
    if (!strstr(p->err.message, words))
        fail_msg("message \"%s\" lacks \"%s\" for %s", p->err.message, words, text);
    release(p);
}

static void test_minimal_sleep(void **state)
{
    struct parsed *p = parse("{\"type\":\"sleep\",\"ms\":5}");
    assert_int_equal(p->rc, 0);
    assert_string_equal(p->job.exec->type, "sleep");
    assert_int_equal(p->job.timeout_ms, d.cfg.timeout_ms);
    assert_int_equal(p->job.result_ttl, d.cfg.result_ttl);
    assert_int_equal(p->job.retry.attempts, d.cfg.retry.attempts);
    assert_string_equal(p->job.id, "");
    assert_null(p->job.reply_to);
    release(p);
}

static void test_all_common_fields(void **state)
{
    struct parsed *p = parse("{\"type\":\"sleep\",\"ms\":5,\"id\":\"a.B_c:d-9\",\"timeout_ms\":250,"
                             "\"retry\":{\"attempts\":4,\"delay_ms\":10,\"backoff\":1.5,"
                             "\"max_delay_ms\":99,\"jitter\":false},\"reply_to\":\"client:42\","
                             "\"result_ttl\":60,\"delay_ms\":500}");
    assert_int_equal(p->rc, 0);
    assert_string_equal(p->job.id, "a.B_c:d-9");
    assert_int_equal(p->job.timeout_ms, 250);
    assert_int_equal(p->job.retry.attempts, 4);
    assert_int_equal(p->job.retry.delay_ms, 10);
    assert_true(p->job.retry.backoff == 1.5);
    assert_int_equal(p->job.retry.max_delay_ms, 99);
    assert_false(p->job.retry.jitter);
    assert_string_equal(p->job.reply_to, "client:42");
    assert_int_equal(p->job.result_ttl, 60);
    assert_int_equal(p->job.due_ms, 1000000 + 500);
    release(p);
}

static void test_partial_retry_keeps_defaults(void **state)
{
    struct parsed *p = parse("{\"type\":\"sleep\",\"ms\":1,\"retry\":{\"attempts\":7}}");
    assert_int_equal(p->rc, 0);
    assert_int_equal(p->job.retry.attempts, 7);
    assert_int_equal(p->job.retry.delay_ms, d.cfg.retry.delay_ms);
    assert_true(p->job.retry.backoff == d.cfg.retry.backoff);
    release(p);
}

static void test_run_at(void **state)
{
    struct parsed *p = parse("{\"type\":\"sleep\",\"ms\":1,\"run_at\":1764000000000}");
    assert_int_equal(p->rc, 0);
    assert_int_equal(p->job.due_ms, 1764000000000LL);
    release(p);
}

static void test_not_json(void **state)
{
    expect_error("{\"type\":", ERR_INVALID_JOB, "not JSON");
    expect_error("", ERR_INVALID_JOB, "not JSON");
    expect_error("[1,2]", ERR_INVALID_JOB, "must be a JSON object");
    expect_error("\"sleep\"", ERR_INVALID_JOB, "not JSON");
    expect_error("{\"type\":\"sleep\",\"type\":\"hash\",\"ms\":1}", ERR_INVALID_JOB, "duplicate");
}

static void test_type(void **state)
{
    expect_error("{\"ms\":1}", ERR_INVALID_JOB, "type: required");
    expect_error("{\"type\":7}", ERR_INVALID_JOB, "type: must be a string");
    expect_error("{\"type\":\"teleport\"}", ERR_UNKNOWN_TYPE, "teleport");
}

static void test_id(void **state)
{
    char long_id[200];
    memset(long_id, 'a', 129);
    long_id[129] = '\0';
    char text[400];
    snprintf(text, sizeof(text), "{\"type\":\"sleep\",\"ms\":1,\"id\":\"%s\"}", long_id);
    expect_error(text, ERR_INVALID_JOB, "id:");
    long_id[128] = '\0';
    snprintf(text, sizeof(text), "{\"type\":\"sleep\",\"ms\":1,\"id\":\"%s\"}", long_id);
    struct parsed *p = parse(text);
    assert_int_equal(p->rc, 0);
    release(p);
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"id\":\"\"}", ERR_INVALID_JOB, "id:");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"id\":\"a b\"}", ERR_INVALID_JOB, "id:");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"id\":\"a/b\"}", ERR_INVALID_JOB, "id:");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"id\":\"\\u00e9\"}", ERR_INVALID_JOB, "id:");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"id\":12}", ERR_INVALID_JOB, "id:");
}

static void test_id_kept_when_rest_is_bad(void **state)
{
    struct parsed *p = parse("{\"type\":\"sleep\",\"id\":\"keep-me\",\"ms\":-1}");
    assert_int_equal(p->rc, -1);
    assert_string_equal(p->job.id, "keep-me");
    release(p);
}

static void test_timeout(void **state)
{
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"timeout_ms\":0}", ERR_INVALID_JOB, "timeout_ms");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"timeout_ms\":-5}", ERR_INVALID_JOB, "timeout_ms");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"timeout_ms\":\"9\"}", ERR_INVALID_JOB,
                 "timeout_ms");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"timeout_ms\":1.5}", ERR_INVALID_JOB,
                 "timeout_ms");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"timeout_ms\":99999999999999}", ERR_INVALID_JOB,
                 "timeout_ms");
}

static void test_retry(void **state)
{
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"retry\":3}", ERR_INVALID_JOB, "retry: must be");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"retry\":{\"attempts\":0}}", ERR_INVALID_JOB,
                 "retry.attempts");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"retry\":{\"attempts\":101}}", ERR_INVALID_JOB,
                 "retry.attempts");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"retry\":{\"backoff\":0.5}}", ERR_INVALID_JOB,
                 "retry.backoff");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"retry\":{\"jitter\":1}}", ERR_INVALID_JOB,
                 "retry.jitter");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"retry\":{\"delay_ms\":-1}}", ERR_INVALID_JOB,
                 "retry.delay_ms");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"retry\":{\"tries\":2}}", ERR_INVALID_JOB,
                 "retry: unknown field \"tries\"");
}

static void test_reply_to(void **state)
{
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"reply_to\":5}", ERR_INVALID_JOB, "reply_to");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"reply_to\":\"\"}", ERR_INVALID_JOB, "reply_to");
    /* Our own channels would feed results back in as jobs or commands. */
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"reply_to\":\"jobd:jobs\"}", ERR_INVALID_JOB,
                 "own channels");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"reply_to\":\"jobd:control\"}", ERR_INVALID_JOB,
                 "own channels");
}

static void test_result_ttl_and_due(void **state)
{
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"result_ttl\":0}", ERR_INVALID_JOB, "result_ttl");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"result_ttl\":\"1h\"}", ERR_INVALID_JOB,
                 "result_ttl");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"run_at\":-1}", ERR_INVALID_JOB, "run_at");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"delay_ms\":\"5\"}", ERR_INVALID_JOB, "delay_ms");
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"delay_ms\":5,\"run_at\":5}", ERR_INVALID_JOB,
                 "one or the other");
}

static void test_unknown_fields(void **state)
{
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"priority\":9}", ERR_INVALID_JOB,
                 "unknown field \"priority\"");
    expect_error("{\"type\":\"sleep\"}", ERR_INVALID_JOB, "sleep.ms: required");
    expect_error("{\"type\":\"sleep\",\"ms\":\"soon\"}", ERR_INVALID_JOB, "sleep.ms");
}

static void test_too_large(void **state)
{
    int64_t saved = d.cfg.max_job_bytes;
    d.cfg.max_job_bytes = 20;
    expect_error("{\"type\":\"sleep\",\"ms\":1,\"id\":\"x\"}", ERR_TOO_LARGE, "max_job_bytes");
    d.cfg.max_job_bytes = saved;
}

/* A stream entry's id or queued_at field sets queued_at, up to INT64_MAX:
 * the due time saturates instead of overflowing (found by fuzz_intake). */
static void test_delay_from_huge_queued_at(void **state)
{
    struct parsed *p = parse_queued("{\"type\":\"sleep\",\"ms\":1,\"delay_ms\":5}", INT64_MAX);
    assert_int_equal(p->rc, 0);
    assert_true(p->job.due_ms == INT64_MAX);
    release(p);
}

/* The error of a rejected envelope always reaches the result record, even
 * when its message is not UTF-8 (jansson quotes the raw bytes near a parse
 * error; "%.64s" can cut a character): found by fuzz_envelope. */
static void test_error_record_survives_bad_utf8(void **state)
{
    const char *texts[] = {"{\"type\":\"\\u0\xd0\xa4\"}", "{\"type\":\"\xff\"}"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct parsed *p = parse(texts[i]);
        assert_int_equal(p->rc, -1);
        p->job.status = JOB_REJECTED;
        p->job.error = p->err;
        json_t *rec = result_record(&d, &p->job);
        json_t *e = json_object_get(rec, "error");
        assert_non_null(json_object_get(e, "message"));
        assert_string_equal(json_string_value(json_object_get(e, "code")), ERR_INVALID_JOB);
        assert_non_null(strstr(json_string_value(json_object_get(e, "message")), "not JSON"));
        json_decref(rec);
        release(p);
    }
    /* A character cut in two by "%.64s": 63 ASCII bytes, then e-acute. */
    char text[200], type[80];
    memset(type, 'a', 63);
    strcpy(type + 63, "\xc3\xa9");
    snprintf(text, sizeof(text), "{\"type\":\"%s\"}", type);
    struct parsed *p = parse(text);
    assert_string_equal(p->err.code, ERR_UNKNOWN_TYPE);
    p->job.status = JOB_REJECTED;
    p->job.error = p->err;
    json_t *rec = result_record(&d, &p->job);
    const char *msg = json_string_value(json_object_get(json_object_get(rec, "error"), "message"));
    assert_non_null(msg);
    assert_non_null(strstr(msg, "aaa?"));
    json_decref(rec);
    release(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_sleep),
        cmocka_unit_test(test_all_common_fields),
        cmocka_unit_test(test_partial_retry_keeps_defaults),
        cmocka_unit_test(test_run_at),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_type),
        cmocka_unit_test(test_id),
        cmocka_unit_test(test_id_kept_when_rest_is_bad),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_retry),
        cmocka_unit_test(test_reply_to),
        cmocka_unit_test(test_result_ttl_and_due),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_delay_from_huge_queued_at),
        cmocka_unit_test(test_error_record_survives_bad_utf8),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
