/* test_http_response.c - what a remote server's answer becomes: a "json"
 * response nested deeper than a result record can hold is refused as
 * too_large (found by fuzz/fuzz_http_response.c: the record was stored, but
 * jansson, and so jobctl, could not read it back), and one just within the
 * limit still reads back from the deepest record that can hold it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "daemon.h"
#include "executor.h"
#include "http_response.h"
#include "result.h"

/* "[[...]]" nested DEPTH deep: an HTTP body, fed in 1000-byte chunks. */
static json_t *answer(int depth, bool batch, struct http_budget *budget, struct job_error *err)
{
    char *body = malloc((size_t)depth * 2);
    assert_non_null(body);
    memset(body, '[', (size_t)depth);
    memset(body + depth, ']', (size_t)depth);
    struct http_response r = {.mode = RESP_JSON, .max_bytes = 1 << 20, .budget = budget};
    assert_int_equal(http_response_begin(&r), 0);
    http_response_header(&r, "HTTP/1.1 200 OK\r\n", 17);
    for (size_t at = 0; at < (size_t)depth * 2; at += 1000) {
        size_t n = (size_t)depth * 2 - at < 1000 ? (size_t)depth * 2 - at : 1000;
        assert_true(http_response_body(&r, body + at, n));
    }
    memset(err, 0, sizeof(*err));
    json_t *res = http_response_result(&r, 200, true, batch, "http://x.example/", err);
    http_response_end(&r, res == NULL);
    http_response_reset(&r);
    free(body);
    return res;
}

static void test_json_nested_past_the_limit_is_too_large(void **state)
{
    struct http_budget budget = {.kept = 0, .max = INT64_MAX};
    struct job_error err;
    assert_null(answer(HTTP_JSON_MAX_NESTING + 1, false, &budget, &err));
    assert_string_equal(err.code, ERR_TOO_LARGE);
    assert_non_null(strstr(err.message, "nests deeper than the 2032 levels"));
    assert_int_equal(budget.kept, 0);   /* given back */
    /* 2047 was the deepest jansson parsed, and 2 more in the record: it
     * could not be read back. */
    assert_null(answer(2047, false, &budget, &err));
    assert_string_equal(err.code, ERR_TOO_LARGE);
}

/* JOB's record, its result wrapped as far as records nest an http result:
 * a batch's results, then three groups. */
static void test_json_at_the_limit_reads_back_from_the_deepest_record(void **state)
{
    static struct daemon d;
    assert_int_equal(config_defaults(&d.cfg), 0);
    struct http_budget budget = {.kept = 0, .max = 64 << 20};
    struct job_error err;
    json_t *res = answer(HTTP_JSON_MAX_NESTING, true, &budget, &err);
    assert_non_null(res);
    assert_true(budget.kept > 0 && budget.kept <= budget.max);

    /* {"results": [RES]}, then per group {"results": [{record: {"result": ...}}]}. */
    json_t *result = json_pack("{s:[o]}", "results", res);
    for (int group = 0; group < 3; group++)
        result = json_pack("{s:[{s:s, s:o}]}", "results", "status", "succeeded", "result", result);
    struct job job;
    memset(&job, 0, sizeof(job));
    job.d = &d;
    job.exec = &http_executor;
    job.status = JOB_SUCCEEDED;
    job.result = result;
    json_t *rec = result_record(&d, &job);
    assert_non_null(rec);       /* jansson reads it, as jobctl does */
    json_decref(rec);
    json_decref(result);
    config_free(&d.cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_nested_past_the_limit_is_too_large),
        cmocka_unit_test(test_json_at_the_limit_reads_back_from_the_deepest_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
