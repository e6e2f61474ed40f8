/* test_retry.c - PROTOCOL §2: the backoff formula and which errors retry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "job.h"

static const struct retry_policy no_jitter = {
    .attempts = 5, .delay_ms = 1000, .backoff = 2.0, .max_delay_ms = 60000, .jitter = false};

static void test_backoff_grows_geometrically(void **state)
{
    assert_int_equal(retry_delay_ms(&no_jitter, 1, 0.3), 1000);
    assert_int_equal(retry_delay_ms(&no_jitter, 2, 0.3), 2000);
    assert_int_equal(retry_delay_ms(&no_jitter, 3, 0.3), 4000);
    assert_int_equal(retry_delay_ms(&no_jitter, 6, 0.3), 32000);
}

static void test_backoff_is_capped(void **state)
{
    assert_int_equal(retry_delay_ms(&no_jitter, 7, 0.0), 60000);
    /* An exponent large enough to overflow a double still gives the cap. */
    assert_int_equal(retry_delay_ms(&no_jitter, 5000, 0.0), 60000);
}

static void test_jitter_scales_into_half_to_full(void **state)
{
    struct retry_policy p = no_jitter;
    p.jitter = true;
    assert_int_equal(retry_delay_ms(&p, 2, 0.0), 1000);     /* 2000 * 0.5 */
    assert_int_equal(retry_delay_ms(&p, 2, 0.5), 1500);     /* 2000 * 0.75 */
    int64_t top = retry_delay_ms(&p, 2, 0.999999);
    assert_true(top >= 1999 && top <= 2000);
}

static void test_fractional_backoff(void **state)
{
    struct retry_policy p = no_jitter;
    p.backoff = 1.5;
    assert_int_equal(retry_delay_ms(&p, 3, 0.0), 2250);
    p.backoff = 1.0;
    assert_int_equal(retry_delay_ms(&p, 9, 0.0), 1000);
}

static bool transient(const char *code, int status, const char *sqlstate)
{
    struct job_error e;
    job_error_set(&e, code, "x");
    e.http_status = status;
    snprintf(e.sqlstate, sizeof(e.sqlstate), "%s", sqlstate);
    return job_error_is_transient(&e);
}

static void test_transient_errors(void **state)
{
    assert_true(transient(ERR_TIMEOUT, 0, ""));
    assert_true(transient(ERR_HTTP_ERROR, 0, ""));
    assert_true(transient(ERR_UNAVAILABLE, 0, ""));
    assert_true(transient(ERR_HTTP_STATUS, 429, ""));
    assert_true(transient(ERR_HTTP_STATUS, 500, ""));
    assert_true(transient(ERR_HTTP_STATUS, 503, ""));
    assert_true(transient(ERR_SQL_ERROR, 0, "08006"));
    assert_true(transient(ERR_SQL_ERROR, 0, "40001"));
    assert_true(transient(ERR_SQL_ERROR, 0, "40P01"));
    assert_true(transient(ERR_SQL_ERROR, 0, "57P01"));
}

static void test_permanent_errors(void **state)
{
    assert_false(transient(ERR_HTTP_STATUS, 404, ""));
    assert_false(transient(ERR_HTTP_STATUS, 400, ""));
    assert_false(transient(ERR_SQL_ERROR, 0, "42P01"));
    assert_false(transient(ERR_SQL_ERROR, 0, "23505"));
    assert_false(transient(ERR_INVALID_JOB, 0, ""));
    assert_false(transient(ERR_FORBIDDEN, 0, ""));
    assert_false(transient(ERR_TOO_LARGE, 0, ""));
    assert_false(transient(ERR_IO_ERROR, 0, ""));
    assert_false(transient(ERR_CANCELLED, 0, ""));
    struct job_error none = {0};
    assert_false(job_error_is_transient(&none));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_grows_geometrically),
        cmocka_unit_test(test_backoff_is_capped),
        cmocka_unit_test(test_jitter_scales_into_half_to_full),
        cmocka_unit_test(test_fractional_backoff),
        cmocka_unit_test(test_transient_errors),
        cmocka_unit_test(test_permanent_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
